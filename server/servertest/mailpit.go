package servertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MailpitVersion is the Mailpit the tests run: a real SMTP server that
// keeps what it receives and serves it through an HTTP API.
const MailpitVersion = "v1.33.1"

// Mailpit is a Mailpit process that the package's servers send their mail
// to (see WithMail).
type Mailpit struct {
	// SMTPURL is its SMTP address, as -smtp-url takes it (smtp://, no
	// STARTTLS offered).
	SMTPURL string
	// APIURL is the base URL of its HTTP API.
	APIURL string
}

var mailpit struct {
	started bool
	m       *Mailpit
	err     error
}

// WithMail points the server's mail at the package's Mailpit (see
// SharedMailpit).
func WithMail(tb testing.TB) Option {
	tb.Helper()
	m := SharedMailpit(tb)
	return func(s *settings) { s.cfg.SMTPURL = m.SMTPURL }
}

// SharedMailpit returns the package's Mailpit, starting it on first use;
// it stops when the package's tests end. The binary is
// PARLEY_TEST_MAILPIT (which `make test` sets), else mailpit in GOPATH/bin,
// else installed there first with `go install`.
func SharedMailpit(tb testing.TB) *Mailpit {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		tb.Fatal("servertest: call servertest.Main(m) from the package's TestMain")
	}
	if !mailpit.started {
		mailpit.started = true
		var stop func() error
		// It takes any user name and password, even without TLS, so
		// that a test can see that the sender does not send them.
		if mailpit.m, stop, mailpit.err = startMailpit("--smtp-auth-accept-any", "--smtp-auth-allow-insecure"); mailpit.err == nil {
			shared.cleanups = append(shared.cleanups, stop)
		}
	}
	if mailpit.err != nil {
		tb.Fatalf("servertest: mailpit: %v", mailpit.err)
	}
	return mailpit.m
}

// mailpitBinary finds or installs the Mailpit binary.
func mailpitBinary() (string, error) {
	if bin := os.Getenv("PARLEY_TEST_MAILPIT"); bin != "" {
		return bin, nil
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOPATH: %w", err)
	}
	gopath := strings.TrimSpace(strings.Split(string(out), string(os.PathListSeparator))[0])
	bin := filepath.Join(gopath, "bin", "mailpit")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "servertest: installing mailpit %s into %s (set PARLEY_TEST_MAILPIT to use another)\n", MailpitVersion, bin)
	cmd := exec.Command("go", "install", "github.com/axllent/mailpit@"+MailpitVersion)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install mailpit: %w\n%s", err, out)
	}
	return bin, nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// StartMailpit starts a Mailpit of the test's own, with extra arguments
// (such as --smtp-tls-cert), stopped when the test ends.
func StartMailpit(tb testing.TB, args ...string) *Mailpit {
	tb.Helper()
	m, stop, err := startMailpit(args...)
	if err != nil {
		tb.Fatalf("servertest: mailpit: %v", err)
	}
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("servertest: mailpit: %v", err)
		}
	})
	return m
}

func startMailpit(args ...string) (_ *Mailpit, stop func() error, _ error) {
	bin, err := mailpitBinary()
	if err != nil {
		return nil, nil, err
	}
	smtpAddr, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	httpAddr, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "parley-mailpit-")
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, append([]string{
		"--smtp", smtpAddr, "--listen", httpAddr,
		"--database", filepath.Join(dir, "mailpit.db"),
		"--max", "0", "--quiet", "--disable-version-check",
		"--smtp-disable-rdns"}, args...)...)
	var out SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// It ends with the test binary, even one that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop = func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		return os.RemoveAll(dir)
	}
	m := &Mailpit{SMTPURL: "smtp://" + smtpAddr, APIURL: "http://" + httpAddr}
	// Ready when its API answers (and so its SMTP listener is up: it
	// starts that first); polled, since it is another process.
	deadline := time.Now().Add(time.Minute)
	probe := &http.Client{Timeout: 2 * time.Second}
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		if res, err := probe.Get(m.APIURL + "/api/v1/info"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				if c, err := net.Dial("tcp", smtpAddr); err == nil {
					c.Close()
					break
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, nil, errors.Join(errors.New("not ready after a minute: "+out.String()), stop())
		}
		select {
		case err := <-exited:
			os.RemoveAll(dir)
			return nil, nil, fmt.Errorf("exited: %v\n%s", err, out.String())
		case <-time.After(wait):
		}
	}
	return m, stop, nil
}

// Mail is one message Mailpit received.
type Mail struct {
	ID      string
	From    string
	To      []string
	Subject string
	Text    string
	// Username is the name the sender authenticated with, if it did.
	Username string
	Created  time.Time
}

type mailpitAddress struct{ Name, Address string }

// Mails returns the messages Mailpit has received for the address to (in
// any case), oldest first.
func (m *Mailpit) Mails(tb testing.TB, to string) []Mail {
	tb.Helper()
	mails, err := m.mails(to)
	if err != nil {
		tb.Fatalf("mailpit: %v", err)
	}
	return mails
}

func (m *Mailpit) mails(to string) ([]Mail, error) {
	var list struct {
		Messages []struct {
			ID       string
			To       []mailpitAddress
			Username string
			Created  time.Time
		} `json:"messages"`
	}
	q := url.Values{"query": {`to:"` + to + `"`}, "limit": {"1000"}}
	if err := m.get("/api/v1/search?"+q.Encode(), &list); err != nil {
		return nil, err
	}
	var mails []Mail
	for _, s := range list.Messages {
		// The search matches parts of addresses too.
		if !slices.ContainsFunc(s.To, func(a mailpitAddress) bool { return strings.EqualFold(a.Address, to) }) {
			continue
		}
		var msg struct {
			ID      string
			From    mailpitAddress
			To      []mailpitAddress
			Subject string
			Text    string
			Date    time.Time
		}
		if err := m.get("/api/v1/message/"+url.PathEscape(s.ID), &msg); err != nil {
			return nil, err
		}
		mail := Mail{ID: msg.ID, From: msg.From.Address, Subject: msg.Subject, Text: msg.Text, Username: s.Username, Created: s.Created}
		for _, a := range msg.To {
			mail.To = append(mail.To, a.Address)
		}
		mails = append(mails, mail)
	}
	// The search gives the newest first.
	slices.Reverse(mails)
	return mails, nil
}

// WaitMails waits (up to 30 s, polling Mailpit's API) until Mailpit has
// received at least n messages for the address to, and returns them all,
// oldest first.
func (m *Mailpit) WaitMails(tb testing.TB, to string, n int) []Mail {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		mails, err := m.mails(to)
		if err != nil {
			tb.Fatalf("mailpit: %v", err)
		}
		if len(mails) >= n {
			return mails
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mailpit: %d mails for %s after 30 s, want %d", len(mails), to, n)
		}
		time.Sleep(wait)
	}
}

// WaitMail waits for the n-th message (counting from 1) for the address
// to and returns it.
func (m *Mailpit) WaitMail(tb testing.TB, to string, n int) Mail {
	tb.Helper()
	return m.WaitMails(tb, to, n)[n-1]
}

func (m *Mailpit) get(path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.APIURL+path, nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}
