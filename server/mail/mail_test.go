package mail_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"strings"
	"testing"

	"github.com/parley-chat/parley/server/mail"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// send sends one mail to a new address through the server url names and
// returns the address.
func send(t *testing.T, url string, roots *x509.CertPool) (string, error) {
	t.Helper()
	s, err := mail.NewSMTP(url, "Parley Test <no-reply@parley.test>", roots)
	if err != nil {
		t.Fatal(err)
	}
	to := servertest.UniqueName("smtp") + "@example.com"
	return to, s.Send(context.Background(), mail.Message{To: to, Subject: "Your code", Text: "Hello,\n\nyour code is 12345678.\n"})
}

// checkMail fails the test unless Mailpit has the mail send sent to to,
// sent by user ("" for none).
func checkMail(t *testing.T, mp *servertest.Mailpit, to, user string) {
	t.Helper()
	got := mp.WaitMail(t, to, 1)
	text := strings.ReplaceAll(got.Text, "\r\n", "\n")
	if got.From != "no-reply@parley.test" || got.Subject != "Your code" || text != "Hello,\n\nyour code is 12345678.\n" || got.Username != user {
		t.Errorf("mail = from %q subject %q text %q user %q, want no-reply@parley.test, \"Your code\", the text sent, user %q", got.From, got.Subject, text, got.Username, user)
	}
}

// TestSMTP_Send sends through a real SMTP server (Mailpit) without TLS
// and reads the mail back from it.
func TestSMTP_Send(t *testing.T) {
	mp := servertest.SharedMailpit(t)
	to, err := send(t, mp.SMTPURL, nil)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	checkMail(t, mp, to, "")

	t.Run("NoPasswordInTheClear", func(t *testing.T) {
		// The server offers only PLAIN and LOGIN, and no TLS.
		_, err := send(t, strings.Replace(mp.SMTPURL, "smtp://", "smtp://parley:secret@", 1), nil)
		if err == nil {
			t.Fatal("Send authenticated without TLS")
		}
	})
	// Mailpit here offers no STARTTLS and speaks no TLS.
	for _, scheme := range []string{"smtp+starttls://", "smtps://"} {
		t.Run("TLSRequired/"+scheme, func(t *testing.T) {
			if _, err := send(t, strings.Replace(mp.SMTPURL, "smtp://", scheme, 1), nil); err == nil {
				t.Fatal("Send succeeded without TLS")
			}
		})
	}
}

// TestSMTP_TLS sends with STARTTLS (offered, then required) and with
// implicit TLS, authenticating, to Mailpits with a certificate of the
// test's.
func TestSMTP_TLS(t *testing.T) {
	roots, cert, key := servertest.SelfSignedCert(t, t.TempDir())
	tlsArgs := []string{"--smtp-tls-cert", cert, "--smtp-tls-key", key, "--smtp-auth-accept-any"}
	starttls := servertest.StartMailpit(t, tlsArgs...)
	implicit := servertest.StartMailpit(t, append(tlsArgs, "--smtp-require-tls")...)
	for _, tc := range []struct {
		name, url string
		mp        *servertest.Mailpit
	}{
		{"smtp", starttls.SMTPURL, starttls},
		{"smtp+starttls", strings.Replace(starttls.SMTPURL, "smtp://", "smtp+starttls://", 1), starttls},
		{"smtps", strings.Replace(implicit.SMTPURL, "smtp://", "smtps://", 1), implicit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			to, err := send(t, strings.Replace(tc.url, "://", "://parley:secret@", 1), roots)
			if err != nil {
				t.Fatalf("Send: %v", err)
			}
			checkMail(t, tc.mp, to, "parley")
		})
	}
	t.Run("UnknownCertificate", func(t *testing.T) {
		if _, err := send(t, strings.Replace(starttls.SMTPURL, "smtp://", "smtp+starttls://", 1), x509.NewCertPool()); err == nil {
			t.Fatal("Send trusted a certificate outside its roots")
		}
	})
}

func TestNewSMTP_BadURL(t *testing.T) {
	for _, u := range []string{
		"http://mail.example.com",
		"smtp://",
		"smtp://mail.example.com:99999",
		"smtp://mail.example.com/path",
		"smtp://mail.example.com?x=1",
	} {
		if _, err := mail.NewSMTP(u, "no-reply@example.com", nil); err == nil {
			t.Errorf("NewSMTP(%q) succeeded, want an error", u)
		}
	}
	if _, err := mail.NewSMTP("smtp://mail.example.com", "not an address", nil); err == nil {
		t.Error("NewSMTP with from \"not an address\" succeeded, want an error")
	}
}

func TestLog_Send(t *testing.T) {
	var buf bytes.Buffer
	l := mail.NewLog(slog.New(slog.NewTextHandler(&buf, nil)), "no-reply@parley.test")
	if err := l.Send(context.Background(), mail.Message{To: "a@example.com", Subject: "Your code", Text: "code 42"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"to=a@example.com", `subject="Your code"`, `text="code 42"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log %q does not contain %q", buf.String(), want)
		}
	}
}
