// Package mail sends the server's emails (verification links and codes,
// password reset codes) through an SMTP server, or, when none is
// configured, writes them to the log so that a development server shows
// what it would have sent.
package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"net/url"
	"strconv"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// Message is one plain-text email to one recipient.
type Message struct {
	// To is the recipient's address.
	To string
	// Subject is the subject line.
	Subject string
	// Text is the body, in plain text.
	Text string
}

// Sender sends emails.
type Sender interface {
	// Send delivers msg to the mail server (or wherever the Sender puts
	// mail); it returns once the server has accepted it.
	Send(ctx context.Context, msg Message) error
}

// SMTP sends mail through one SMTP server. It opens a connection for each
// message: the server's mail is a few codes an hour, not a stream.
type SMTP struct {
	from    string
	host    string
	opts    []gomail.Option
	display string
}

// Timeout bounds connecting to the SMTP server and each of its answers.
const Timeout = 15 * time.Second

// NewSMTP returns a sender that sends from the address from (such as
// "Parley <no-reply@example.com>") through the server rawURL names:
//
//	smtp://[user:pass@]host[:port]          STARTTLS when the server offers it (port 587)
//	smtp+starttls://[user:pass@]host[:port] STARTTLS required (port 587)
//	smtps://[user:pass@]host[:port]         TLS from the first byte (port 465)
//
// With a user name, it authenticates with the strongest mechanism the
// server offers; without TLS, only with one that does not send the
// password (SCRAM, CRAM-MD5). rootCAs verifies the server's certificate;
// nil: the system's roots.
func NewSMTP(rawURL, from string, rootCAs *x509.CertPool) (*SMTP, error) {
	if _, err := netmail.ParseAddress(from); err != nil {
		return nil, fmt.Errorf("mail from %q: %w", from, err)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("smtp url: %w", err)
	}
	if u.Hostname() == "" {
		return nil, errors.New("smtp url: no host")
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return nil, errors.New("smtp url: want scheme://[user:pass@]host[:port], with no path or query")
	}
	opts := []gomail.Option{
		gomail.WithTimeout(Timeout),
		gomail.WithTLSConfig(&tls.Config{ServerName: u.Hostname(), RootCAs: rootCAs, MinVersion: tls.VersionTLS12}),
	}
	var port int
	switch u.Scheme {
	case "smtp":
		port = 587
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSOpportunistic))
	case "smtp+starttls":
		port = 587
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	case "smtps":
		port = 465
		opts = append(opts, gomail.WithSSL())
	default:
		return nil, fmt.Errorf("smtp url: scheme %q: want smtp, smtp+starttls or smtps", u.Scheme)
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("smtp url: port %q", p)
		}
	}
	opts = append(opts, gomail.WithPort(port))
	if u.User != nil && u.User.Username() != "" {
		pass, _ := u.User.Password()
		opts = append(opts,
			gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(u.User.Username()),
			gomail.WithPassword(pass))
	}
	// Checked once here, so that a bad option fails at start-up.
	if _, err := gomail.NewClient(u.Hostname(), opts...); err != nil {
		return nil, fmt.Errorf("smtp url: %w", err)
	}
	return &SMTP{from: from, host: u.Hostname(), opts: opts, display: u.Redacted()}, nil
}

// String describes the server, without its password.
func (s *SMTP) String() string { return s.display }

// Send sends msg.
func (s *SMTP) Send(ctx context.Context, msg Message) error {
	m := gomail.NewMsg()
	if err := m.From(s.from); err != nil {
		return fmt.Errorf("send mail: from: %w", err)
	}
	if err := m.To(msg.To); err != nil {
		return fmt.Errorf("send mail: to: %w", err)
	}
	m.Subject(msg.Subject)
	m.SetDate()
	m.SetMessageID()
	m.SetBodyString(gomail.TypeTextPlain, msg.Text)
	c, err := gomail.NewClient(s.host, s.opts...)
	if err != nil {
		return fmt.Errorf("send mail: %w", err)
	}
	if err := c.DialAndSendWithContext(ctx, m); err != nil {
		return fmt.Errorf("send mail via %s: %w", s.display, err)
	}
	return nil
}

// Log writes each mail to a logger instead of sending it, for servers
// with no SMTP server configured.
type Log struct {
	log  *slog.Logger
	from string
}

// NewLog returns a sender that logs each message at the Info level.
func NewLog(log *slog.Logger, from string) *Log { return &Log{log: log, from: from} }

// Send logs msg.
func (l *Log) Send(ctx context.Context, msg Message) error {
	l.log.InfoContext(ctx, "mail (not sent: no -smtp-url)",
		"from", l.from, "to", msg.To, "subject", msg.Subject, "text", msg.Text)
	return nil
}

var (
	_ Sender = (*SMTP)(nil)
	_ Sender = (*Log)(nil)
)
