package auth_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/servertest"
)

// accountServer starts a server that mails through the package's Mailpit
// and takes the client's address from X-Real-IP, so that each test has
// password reset budgets of its own.
func accountServer(t *testing.T, clock *servertest.Clock) (*servertest.Server, *servertest.Mailpit) {
	t.Helper()
	srv := servertest.New(t, servertest.WithMail(t), servertest.WithConfig(func(c *app.Config) {
		c.ClientIPHeader = "X-Real-IP"
		if clock != nil {
			c.Now = clock.Now
		}
	}))
	return srv, servertest.SharedMailpit(t)
}

var lastIP atomic.Int32

// newIP returns a client address no other call returns.
func newIP() string {
	n := int(lastIP.Add(1))
	return "198.51." + strconv.Itoa(n/256) + "." + strconv.Itoa(n%256)
}

// from returns a request for msg with the access token ("" for none) from
// the client address ip.
func from[T any](msg *T, token, ip string) *connect.Request[T] {
	req := servertest.WithToken(msg, token)
	req.Header().Set("X-Real-IP", ip)
	return req
}

var codeLine = regexp.MustCompile(`(?m)^ {4}(\S+)\r?$`)

// codeIn returns the code or token a mail carries on its indented line.
func codeIn(t *testing.T, m servertest.Mail) string {
	t.Helper()
	match := codeLine.FindStringSubmatch(m.Text)
	if match == nil {
		t.Fatalf("mail %q has no code:\n%s", m.Subject, m.Text)
	}
	return match[1]
}

// me returns the account as token's session sees it.
func me(t *testing.T, c servertest.Clients, token string) *parleyv1.Me {
	t.Helper()
	res, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, token))
	if err != nil {
		t.Fatalf("GetMe: %v", err)
	}
	return res.Msg.GetMe()
}

// signIn signs in and returns the session's tokens, or the error.
func signIn(c servertest.Clients, name, password string) (*parleyv1.Tokens, error) {
	res, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: password}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetTokens(), nil
}

// loginToken signs in and returns the session's access token.
func loginToken(t *testing.T, c servertest.Clients, name, password string) string {
	t.Helper()
	tokens, err := signIn(c, name, password)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	return tokens.GetAccessToken()
}

// verify has the account's address verified through the mailed token,
// which is mail number n to it.
func verify(t *testing.T, c servertest.Clients, mp *servertest.Mailpit, a servertest.Account, n int) {
	t.Helper()
	if _, err := c.Account.SendEmailVerification(context.Background(), servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, a.Token)); err != nil {
		t.Fatalf("SendEmailVerification: %v", err)
	}
	m := mp.WaitMail(t, a.Email, n)
	if !strings.HasPrefix(m.Subject, "Verify") {
		t.Fatalf("mail %d to %s is %q, want the verification", n, a.Email, m.Subject)
	}
	token := codeIn(t, m)
	if _, err := c.Account.VerifyEmail(context.Background(), connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token})); err != nil {
		t.Fatalf("VerifyEmail: %v", err)
	}
}

// twoProtocols are Connect and gRPC, which every case runs over.
var twoProtocols = servertest.Protocols[:2]

func TestAccountService_ChangePassword(t *testing.T) {
	srv, _ := accountServer(t, nil)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			a := servertest.Register(t, c.Auth, servertest.UniqueName("chpw"))
			other, err := signIn(c, a.Username, servertest.Password)
			if err != nil {
				t.Fatal(err)
			}
			const newPassword = "a new password of mine"

			_, err = c.Account.ChangePassword(ctx, servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: newPassword}, ""))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			_, err = c.Account.ChangePassword(ctx, servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: "not my password", NewPassword: newPassword}, a.Token))
			servertest.WantCode(t, err, connect.CodePermissionDenied)
			_, err = c.Account.ChangePassword(ctx, servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: "short"}, a.Token))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
			// Refused changes changed nothing: the other session lives.
			me(t, c, other.GetAccessToken())

			if _, err := c.Account.ChangePassword(ctx, servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: newPassword}, a.Token)); err != nil {
				t.Fatalf("ChangePassword: %v", err)
			}
			// The caller's session goes on; the other one ended.
			me(t, c, a.Token)
			_, err = c.User.GetMe(ctx, servertest.WithToken(&parleyv1.GetMeRequest{}, other.GetAccessToken()))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			_, err = c.Auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: other.GetRefreshToken()}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)

			_, err = signIn(c, a.Username, servertest.Password)
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			if _, err := signIn(c, a.Username, newPassword); err != nil {
				t.Fatalf("Login with the new password: %v", err)
			}
		})
	}
}

func TestAccountService_PasswordReset(t *testing.T) {
	srv, mp := accountServer(t, nil)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			ip := newIP()
			a := servertest.Register(t, c.Auth, servertest.UniqueName("reset"))
			verify(t, c, mp, a, 1)
			other, err := signIn(c, a.Username, servertest.Password)
			if err != nil {
				t.Fatal(err)
			}
			request := func() {
				t.Helper()
				// The address in another case is the same address.
				if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: strings.ToUpper(a.Email)}, "", ip)); err != nil {
					t.Fatalf("RequestPasswordReset: %v", err)
				}
			}
			reset := func(code, password string) error {
				_, err := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: a.Email, Code: code, NewPassword: password}, "", ip))
				return err
			}

			request()
			m := mp.WaitMail(t, a.Email, 2)
			if !strings.Contains(m.Subject, "password reset") {
				t.Fatalf("mail 2 is %q, want the reset code", m.Subject)
			}
			code := codeIn(t, m)
			wrong := "00000000"
			if code == wrong {
				wrong = "11111111"
			}
			errWrong := reset(wrong, "the new password")
			servertest.WantCode(t, errWrong, connect.CodeInvalidArgument)
			// The code is still good after one wrong try.
			me(t, c, a.Token)
			if err := reset(code, "the new password"); err != nil {
				t.Fatalf("ResetPassword: %v", err)
			}
			// Every session ended, the caller's too.
			for _, tok := range []string{a.Token, other.GetAccessToken()} {
				_, err := c.User.GetMe(ctx, servertest.WithToken(&parleyv1.GetMeRequest{}, tok))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
			}
			if _, err := signIn(c, a.Email, "the new password"); err != nil {
				t.Fatalf("Login with the new password: %v", err)
			}
			_, err = signIn(c, a.Email, servertest.Password)
			servertest.WantCode(t, err, connect.CodeUnauthenticated)

			// Used once; an unknown address gets the same answer.
			errUsed := reset(code, "yet another password")
			servertest.WantCode(t, errUsed, connect.CodeInvalidArgument)
			_, errUnknown := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: "nobody-" + a.Email, Code: code, NewPassword: "yet another password"}, "", ip))
			servertest.WantCode(t, errUnknown, connect.CodeInvalidArgument)
			if errUsed.Error() != errWrong.Error() || errUnknown.Error() != errWrong.Error() {
				t.Errorf("wrong code: %q, used code: %q, unknown address: %q; want one answer", errWrong, errUsed, errUnknown)
			}

			// Five wrong codes end the code.
			request()
			code = codeIn(t, mp.WaitMail(t, a.Email, 3))
			for range auth.ResetCodeTries {
				servertest.WantCode(t, reset(wrong, "yet another password"), connect.CodeInvalidArgument)
			}
			servertest.WantCode(t, reset(code, "yet another password"), connect.CodeInvalidArgument)

			// A newer code replaces the older one.
			request()
			older := codeIn(t, mp.WaitMail(t, a.Email, 4))
			// The fourth request this hour for the account: refused,
			// from another address too.
			_, err = c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: a.Email}, "", newIP()))
			servertest.WantRetry(t, err)
			if _, err := signIn(c, a.Email, "the new password"); err != nil {
				t.Fatalf("Login after the refused resets: %v", err)
			}
			if older == code {
				t.Fatal("two requests mailed the same code")
			}
			if err := reset(older, "the last password"); err != nil {
				t.Fatalf("ResetPassword with the last code: %v", err)
			}
		})
	}
}

// TestAccountService_PasswordResetSameAnswer checks that an unknown and
// an unverified address get the answer a verified one gets, that neither
// receives a code, and that the address's budget counts them all.
func TestAccountService_PasswordResetSameAnswer(t *testing.T) {
	srv, mp := accountServer(t, nil)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			ip := newIP()
			verified := servertest.Register(t, c.Auth, servertest.UniqueName("same"))
			verify(t, c, mp, verified, 1)
			unverified := servertest.Register(t, c.Auth, servertest.UniqueName("same"))
			unknown := servertest.UniqueName("nobody") + "@example.com"

			var answers []string
			for _, email := range []string{verified.Email, unverified.Email, unknown} {
				res, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: email}, "", ip))
				if err != nil {
					t.Fatalf("RequestPasswordReset(%s): %v", email, err)
				}
				answers = append(answers, res.Msg.String())
			}
			if answers[1] != answers[0] || answers[2] != answers[0] {
				t.Errorf("answers %q, want the same for every address", answers)
			}
			mp.WaitMail(t, verified.Email, 2)

			// An unknown address has an account's budget: the fourth
			// request is refused (from another client address too).
			for range auth.ResetsPerAccount - 1 {
				if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: unknown}, "", ip)); err != nil {
					t.Fatalf("RequestPasswordReset(%s): %v", unknown, err)
				}
			}
			_, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: unknown}, "", newIP()))
			servertest.WantRetry(t, err)

			// The client address's budget, 10 an hour, counted over
			// every address it asked for: 5 so far.
			for i := range auth.ResetsPerAddress - 5 {
				email := servertest.UniqueName("nobody") + "@example.com"
				if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: email}, "", ip)); err != nil {
					t.Fatalf("RequestPasswordReset %d: %v", i, err)
				}
			}
			_, err = c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: verified.Email}, "", ip))
			servertest.WantRetry(t, err)

			// The unverified address got no code: once verified, its
			// first mail is the verification.
			verify(t, c, mp, unverified, 1)
			for _, m := range mp.Mails(t, unverified.Email) {
				if strings.Contains(m.Subject, "password reset") {
					t.Errorf("the unverified address got a reset mail")
				}
			}
		})
	}
}

// TestAccountService_Expiry moves the server's clock past a reset code's
// 15 minutes and a verification token's 24 hours.
func TestAccountService_Expiry(t *testing.T) {
	clock := servertest.NewClock()
	srv, mp := accountServer(t, clock)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			ip := newIP()
			a := servertest.Register(t, c.Auth, servertest.UniqueName("expiry"))
			verify(t, c, mp, a, 1)
			if _, err := c.Account.SendEmailVerification(ctx, servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, a.Token)); connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Fatalf("SendEmailVerification of a verified address: %v, want FAILED_PRECONDITION", err)
			}
			b := servertest.Register(t, c.Auth, servertest.UniqueName("expiry"))
			if _, err := c.Account.SendEmailVerification(ctx, servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, b.Token)); err != nil {
				t.Fatal(err)
			}
			token := codeIn(t, mp.WaitMail(t, b.Email, 1))

			if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: a.Email}, "", ip)); err != nil {
				t.Fatal(err)
			}
			code := codeIn(t, mp.WaitMail(t, a.Email, 2))
			clock.Advance(auth.ResetCodeTTL)
			_, err := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: a.Email, Code: code, NewPassword: "the new password"}, "", ip))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)

			clock.Advance(auth.VerifyTokenTTL - auth.ResetCodeTTL)
			_, err = c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token}))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
			if _, err := signIn(c, a.Email, servertest.Password); err != nil {
				t.Fatalf("Login with the old password: %v", err)
			}
			tokens, err := signIn(c, b.Email, servertest.Password)
			if err != nil {
				t.Fatal(err)
			}
			if me(t, c, tokens.GetAccessToken()).GetEmailVerified() {
				t.Error("an expired token verified the address")
			}
		})
	}
}

func TestAccountService_VerifyEmail(t *testing.T) {
	srv, mp := accountServer(t, nil)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			a := servertest.Register(t, c.Auth, servertest.UniqueName("verify"))
			if m := me(t, c, a.Token); m.GetEmailVerified() || m.GetPendingEmail() != "" {
				t.Fatalf("new account: verified %v, pending %q; want unverified, none", m.GetEmailVerified(), m.GetPendingEmail())
			}
			_, err := c.Account.SendEmailVerification(ctx, servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, ""))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)

			send := func(n int) string {
				t.Helper()
				res, err := c.Account.SendEmailVerification(ctx, servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, a.Token))
				if err != nil {
					t.Fatalf("SendEmailVerification: %v", err)
				}
				if res.Msg.GetEmail() != a.Email {
					t.Errorf("sent to %q, want %q", res.Msg.GetEmail(), a.Email)
				}
				return codeIn(t, mp.WaitMail(t, a.Email, n))
			}
			verifyEmail := func(token string) error {
				_, err := c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token}))
				return err
			}
			superseded := send(1)
			token := send(2)

			// Tampered tokens: another user, a later expiry, a changed
			// MAC, a nonce of another token; and malformed ones.
			parts := strings.Split(token, ".")
			other := strings.Split(superseded, ".")
			tampered := []string{
				strings.Join(append([]string{strconv.Itoa(int(a.ID) + 1)}, parts[1:]...), "."),
				strings.Join([]string{parts[0], parts[1] + "0", parts[2], parts[3], parts[4]}, "."),
				strings.Join([]string{parts[0], parts[1], parts[2], parts[3], flip(parts[4])}, "."),
				strings.Join([]string{parts[0], parts[1], other[2], parts[3], parts[4]}, "."),
				strings.Join(parts[:4], "."),
				"x" + token,
			}
			for _, bad := range tampered {
				servertest.WantCode(t, verifyEmail(bad), connect.CodeInvalidArgument)
			}
			if me(t, c, a.Token).GetEmailVerified() {
				t.Fatal("a tampered token verified the address")
			}
			servertest.WantCode(t, verifyEmail(superseded), connect.CodeInvalidArgument)

			res, err := c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token}))
			if err != nil {
				t.Fatalf("VerifyEmail: %v", err)
			}
			if res.Msg.GetEmail() != a.Email {
				t.Errorf("VerifyEmail says %q, want %q", res.Msg.GetEmail(), a.Email)
			}
			if !me(t, c, a.Token).GetEmailVerified() {
				t.Error("Me says unverified after VerifyEmail")
			}
			servertest.WantCode(t, verifyEmail(token), connect.CodeInvalidArgument)
		})
	}
}

// flip changes the first character of s.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

func TestAccountService_ChangeEmail(t *testing.T) {
	srv, mp := accountServer(t, nil)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			a := servertest.Register(t, c.Auth, servertest.UniqueName("chmail"))
			verify(t, c, mp, a, 1)
			b := servertest.Register(t, c.Auth, servertest.UniqueName("chmail"))
			newEmail := servertest.UniqueName("chmail-new") + "@example.com"
			change := func(password, email string) error {
				_, err := c.Account.ChangeEmail(ctx, servertest.WithToken(&parleyv1.ChangeEmailRequest{Password: password, NewEmail: email}, a.Token))
				return err
			}

			_, err := c.Account.ChangeEmail(ctx, servertest.WithToken(&parleyv1.ChangeEmailRequest{Password: servertest.Password, NewEmail: newEmail}, ""))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			servertest.WantCode(t, change("not my password", newEmail), connect.CodePermissionDenied)
			servertest.WantCode(t, change(servertest.Password, strings.ToUpper(b.Email)), connect.CodeAlreadyExists)
			servertest.WantCode(t, change(servertest.Password, strings.ToUpper(a.Email)), connect.CodeFailedPrecondition)
			servertest.WantCode(t, change(servertest.Password, "not an address"), connect.CodeInvalidArgument)
			if m := me(t, c, a.Token); m.GetPendingEmail() != "" {
				t.Fatalf("refused changes left pending %q", m.GetPendingEmail())
			}

			if err := change(servertest.Password, newEmail); err != nil {
				t.Fatalf("ChangeEmail: %v", err)
			}
			// The old address stays, verified, until the new one is.
			m := me(t, c, a.Token)
			if m.GetEmail() != a.Email || !m.GetEmailVerified() || m.GetPendingEmail() != newEmail {
				t.Fatalf("Me: email %q verified %v pending %q; want %q, true, %q", m.GetEmail(), m.GetEmailVerified(), m.GetPendingEmail(), a.Email, newEmail)
			}
			_, err = signIn(c, newEmail, servertest.Password)
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			notice := mp.WaitMail(t, a.Email, 2)
			if !strings.Contains(notice.Text, newEmail) {
				t.Errorf("the old address's notice does not name the new one:\n%s", notice.Text)
			}
			token := codeIn(t, mp.WaitMail(t, newEmail, 1))

			res, err := c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token}))
			if err != nil {
				t.Fatalf("VerifyEmail: %v", err)
			}
			if res.Msg.GetEmail() != newEmail {
				t.Errorf("VerifyEmail says %q, want %q", res.Msg.GetEmail(), newEmail)
			}
			m = me(t, c, a.Token)
			if m.GetEmail() != newEmail || !m.GetEmailVerified() || m.GetPendingEmail() != "" {
				t.Fatalf("Me: email %q verified %v pending %q; want %q, true, none", m.GetEmail(), m.GetEmailVerified(), m.GetPendingEmail(), newEmail)
			}
			if _, err := signIn(c, newEmail, servertest.Password); err != nil {
				t.Fatalf("Login with the new address: %v", err)
			}
			_, err = signIn(c, a.Email, servertest.Password)
			servertest.WantCode(t, err, connect.CodeUnauthenticated)

			// Another account takes the pending address before it is
			// verified: the confirmation is refused.
			taken := servertest.UniqueName("chmail-taken") + "@example.com"
			if err := change(servertest.Password, taken); err != nil {
				t.Fatalf("ChangeEmail: %v", err)
			}
			token = codeIn(t, mp.WaitMail(t, taken, 1))
			servertest.RegisterWith(t, c.Auth, &parleyv1.RegisterRequest{Username: servertest.UniqueName("chmail"), Email: taken, Password: servertest.Password})
			_, err = c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token}))
			servertest.WantCode(t, err, connect.CodeAlreadyExists)
			if m := me(t, c, a.Token); m.GetEmail() != newEmail {
				t.Errorf("email %q after the refused confirmation, want %q", m.GetEmail(), newEmail)
			}
		})
	}
}

// wantWindow checks that call, which must pass n times an hour, is held
// to n in any hour: the first call passes; n-1 more a minute later pass;
// the next is refused then, 20 minutes later (a token bucket refilling n
// an hour would let it through by then) and a second before the hour
// since the first call is over, each time asking to retry when that hour
// is over; then it passes, and the one after it is refused until the
// hour since the other calls is over. Refusals say msg.
func wantWindow(t *testing.T, clock *servertest.Clock, n int, msg string, call func() error) {
	t.Helper()
	pass := func(what string) {
		t.Helper()
		if err := call(); err != nil {
			t.Fatalf("%s: %v, want it to pass", what, err)
		}
	}
	refuse := func(what string, retry time.Duration) {
		t.Helper()
		err := call()
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("%s: %v, want RESOURCE_EXHAUSTED", what, err)
		}
		if got := servertest.WantRetry(t, err); got != retry {
			t.Errorf("%s: retry after %s, want %s", what, got, retry)
		}
		if !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %q, want it to say %q", what, err, msg)
		}
	}
	pass("call 1")
	clock.Advance(time.Minute)
	for i := 2; i <= n; i++ {
		pass(fmt.Sprintf("call %d, a minute later", i))
	}
	refuse(fmt.Sprintf("call %d, at once", n+1), time.Hour-time.Minute)
	clock.Advance(20 * time.Minute)
	refuse(fmt.Sprintf("call %d, 20 minutes later", n+1), time.Hour-21*time.Minute)
	clock.Advance(time.Hour - 21*time.Minute - time.Second)
	refuse(fmt.Sprintf("call %d, a second before the hour is over", n+1), time.Second)
	clock.Advance(time.Second)
	pass("the call an hour after the first")
	refuse("the call after it", time.Minute)
}

// TestAccountService_LimitWindows holds the password reset and
// verification mail limits to their numbers in any hour.
func TestAccountService_LimitWindows(t *testing.T) {
	clock := servertest.NewClock()
	srv, mp := accountServer(t, clock)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			requestReset := func(email, ip string) error {
				_, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: email}, "", ip))
				return err
			}

			t.Run("reset per account", func(t *testing.T) {
				a := servertest.Register(t, c.Auth, servertest.UniqueName("window"))
				verify(t, c, mp, a, 1)
				// Each from an address of its own: the account's budget
				// is what runs out.
				wantWindow(t, clock, auth.ResetsPerAccount, "too many password resets for this account", func() error {
					return requestReset(a.Email, newIP())
				})
				// Every request that passed mailed a code.
				mp.WaitMail(t, a.Email, 1+auth.ResetsPerAccount+1)
			})

			t.Run("reset per address", func(t *testing.T) {
				ip := newIP()
				wantWindow(t, clock, auth.ResetsPerAddress, "too many password resets from this address", func() error {
					return requestReset(servertest.UniqueName("nobody")+"@example.com", ip)
				})
			})

			t.Run("reset tries per address", func(t *testing.T) {
				ip := newIP()
				// Wrong codes for addresses without an account count:
				// answered INVALID_ARGUMENT within the budget.
				wantWindow(t, clock, auth.ResetTriesPerAddress, "too many password reset attempts from this address", func() error {
					_, err := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: servertest.UniqueName("nobody") + "@example.com", Code: "12345678", NewPassword: "the new password"}, "", ip))
					if connect.CodeOf(err) == connect.CodeInvalidArgument {
						return nil
					}
					return err
				})
				// Right codes count too, and the refusal changes
				// nothing: the code works from another address.
				a := servertest.Register(t, c.Auth, servertest.UniqueName("window"))
				verify(t, c, mp, a, 1)
				if err := requestReset(a.Email, newIP()); err != nil {
					t.Fatal(err)
				}
				code := codeIn(t, mp.WaitMail(t, a.Email, 2))
				reset := &parleyv1.ResetPasswordRequest{Email: a.Email, Code: code, NewPassword: "the new password"}
				_, err := c.Account.ResetPassword(ctx, from(reset, "", ip))
				servertest.WantRetry(t, err)
				if _, err := c.Account.ResetPassword(ctx, from(reset, "", newIP())); err != nil {
					t.Fatalf("ResetPassword from another address: %v", err)
				}
			})

			t.Run("verification mails", func(t *testing.T) {
				a := servertest.Register(t, c.Auth, servertest.UniqueName("window"))
				wantWindow(t, clock, auth.VerifyMailsPerAccount, "too many verification mails for this account", func() error {
					// Signed in afresh: the clock outruns access tokens.
					tokens, err := signIn(c, a.Username, servertest.Password)
					if err != nil {
						t.Fatal(err)
					}
					_, err = c.Account.SendEmailVerification(ctx, servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, tokens.GetAccessToken()))
					return err
				})
				mp.WaitMail(t, a.Email, auth.VerifyMailsPerAccount+1)
			})
		})
	}
}

// TestAccountService_PasswordResetSameWork checks that the password reset
// calls make the same store calls, in number and kind, whether the
// address has an account, a verified address and a code or not: their
// answers take as long, and their time tells nothing.
func TestAccountService_PasswordResetSameWork(t *testing.T) {
	var sc servertest.StoreCalls
	srv := servertest.New(t, servertest.WithMail(t), servertest.WithStoreCalls(&sc), servertest.WithConfig(func(c *app.Config) {
		c.ClientIPHeader = "X-Real-IP"
	}))
	mp := servertest.SharedMailpit(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			verified := servertest.Register(t, c.Auth, servertest.UniqueName("work"))
			verify(t, c, mp, verified, 1)
			unverified := servertest.Register(t, c.Auth, servertest.UniqueName("work"))
			emails := map[string]string{
				"verified":   verified.Email,
				"unverified": unverified.Email,
				"unknown":    servertest.UniqueName("nobody") + "@example.com",
			}
			// calls returns the store calls of one call of f per
			// address (after one more, so that Redis has the scripts).
			calls := func(proc string, f func(email string)) map[string]servertest.Calls {
				t.Helper()
				out := map[string]servertest.Calls{}
				for name, email := range emails {
					f(email)
					sc.Reset()
					f(email)
					out[name] = sc.Of(proc)
				}
				return out
			}
			same := func(what string, got map[string]servertest.Calls) {
				t.Helper()
				want := got["verified"]
				if want.Requests != 1 || want.RedisTotal() == 0 || want.SQL == 0 {
					t.Fatalf("%s, verified address: %+v, want one request's Redis and SQL calls", what, want)
				}
				for name, c := range got {
					if c.RedisRoundTrips != want.RedisRoundTrips || !maps.Equal(c.RedisCommands, want.RedisCommands) || c.SQL != want.SQL || c.MongoTotal() != 0 {
						t.Errorf("%s, %s address: %+v; verified address: %+v; want the same", what, name, c, want)
					}
				}
			}

			same("RequestPasswordReset", calls("/parley.v1.AccountService/RequestPasswordReset", func(email string) {
				if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: email}, "", newIP())); err != nil {
					t.Fatalf("RequestPasswordReset(%s): %v", email, err)
				}
			}))
			// The verified address has a live code now.
			mp.WaitMail(t, verified.Email, 3)
			same("ResetPassword with a wrong code", calls("/parley.v1.AccountService/ResetPassword", func(email string) {
				_, err := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: email, Code: "12345678", NewPassword: "the new password"}, "", newIP()))
				servertest.WantCode(t, err, connect.CodeInvalidArgument)
			}))
		})
	}
}

// TestAccountService_ShutdownWaitsForMail stops the server while a reset
// code's mail is on its way (its SMTP connection held), and checks that
// the server waits for it before it stops. (A shutdown test: one
// protocol is enough.)
func TestAccountService_ShutdownWaitsForMail(t *testing.T) {
	mp := servertest.SharedMailpit(t)
	relay := newHeldSMTP(t, strings.TrimPrefix(mp.SMTPURL, "smtp://"))
	waiting := &logWatch{msg: "shutting down: waiting for mails in flight", seen: make(chan struct{})}
	srv := servertest.New(t, servertest.WithLog(waiting), servertest.WithConfig(func(c *app.Config) {
		c.SMTPURL = "smtp://" + relay.ln.Addr().String()
	}))
	c := servertest.NewClients(srv, twoProtocols[0])
	a := servertest.Register(t, c.Auth, servertest.UniqueName("shutdown"))
	verify(t, c, mp, a, 1)

	relay.holdNext()
	if _, err := c.Account.RequestPasswordReset(context.Background(), connect.NewRequest(&parleyv1.RequestPasswordResetRequest{Email: a.Email})); err != nil {
		t.Fatalf("RequestPasswordReset: %v", err)
	}
	select {
	case <-relay.held:
	case <-time.After(time.Minute):
		t.Fatal("the reset mail did not connect to the SMTP server")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	select {
	case <-waiting.seen:
	case err := <-stopped:
		t.Fatalf("the server stopped (%v) with a mail in flight", err)
	}
	relay.release()
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// Sent before the server stopped: Mailpit has it already.
	mails := mp.Mails(t, a.Email)
	if len(mails) != 2 || !strings.Contains(mails[len(mails)-1].Subject, "password reset") {
		t.Fatalf("mails to %s after the stop: %d, want the verification and the reset code", a.Email, len(mails))
	}
}

// heldSMTP relays SMTP connections to target; the one after holdNext is
// accepted but not passed on until release.
type heldSMTP struct {
	ln     net.Listener
	target string
	held   chan struct{} // closed when the held connection came
	free   chan struct{} // closed by release
	once   sync.Once
	mu     sync.Mutex
	hold   bool
}

func newHeldSMTP(t *testing.T, target string) *heldSMTP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &heldSMTP{ln: ln, target: target, held: make(chan struct{}), free: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed
			}
			r.mu.Lock()
			hold := r.hold
			r.hold = false
			r.mu.Unlock()
			wg.Go(func() { r.relay(conn, hold) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		r.release()
		wg.Wait()
	})
	return r
}

func (r *heldSMTP) holdNext() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold = true
}

func (r *heldSMTP) release() { r.once.Do(func() { close(r.free) }) }

func (r *heldSMTP) relay(conn net.Conn, hold bool) {
	defer conn.Close()
	if hold {
		close(r.held)
		<-r.free
	}
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, conn)
		up.Close()
	}()
	_, _ = io.Copy(conn, up)
	conn.Close()
	<-done
}

// logWatch is a log handler that closes seen at the first record whose
// message is msg.
type logWatch struct {
	msg  string
	seen chan struct{}
	once sync.Once
}

func (w *logWatch) Enabled(context.Context, slog.Level) bool { return true }

func (w *logWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Message == w.msg {
		w.once.Do(func() { close(w.seen) })
	}
	return nil
}

func (w *logWatch) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *logWatch) WithGroup(string) slog.Handler      { return w }

// A reset that fails after taking the code (here: ending the sessions,
// with Redis refusing ZRANGE) leaves the sessions open and gives the code
// back: the retry resets the password and ends them. A reset whose give
// back failed too holds the code a minute: meanwhile the code is ABORTED,
// then it works. A Redis of the test's own, whose ACL it changes.
func TestAccountService_PasswordResetRetried(t *testing.T) {
	rs := servertest.StartRedis(t)
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithMail(t), servertest.WithConfig(func(c *app.Config) {
		c.ClientIPHeader = "X-Real-IP"
		c.RedisURL = rs.URL()
		c.Now = clock.Now
	}))
	mp := servertest.SharedMailpit(t)
	ctx := context.Background()
	c := servertest.NewClients(srv, servertest.Protocols[0])
	ip := newIP()
	a := servertest.Register(t, c.Auth, servertest.UniqueName("retried"))
	verify(t, c, mp, a, 1)
	reset := func(code, password string) error {
		_, err := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: a.Email, Code: code, NewPassword: password}, "", ip))
		return err
	}
	newCode := func(n int) string {
		t.Helper()
		if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: a.Email}, "", ip)); err != nil {
			t.Fatalf("RequestPasswordReset: %v", err)
		}
		return codeIn(t, mp.WaitMail(t, a.Email, n))
	}

	code := newCode(2)
	rs.ACL("-zrange")
	err := reset(code, "the new password")
	rs.ACL("+zrange")
	servertest.WantCode(t, err, connect.CodeInternal)
	me(t, c, a.Token) // not ended yet
	if err := reset(code, "the new password"); err != nil {
		t.Fatalf("ResetPassword, retried: %v", err)
	}
	_, err = c.User.GetMe(ctx, servertest.WithToken(&parleyv1.GetMeRequest{}, a.Token))
	servertest.WantCode(t, err, connect.CodeUnauthenticated)
	servertest.WantCode(t, reset(code, "yet another password"), connect.CodeInvalidArgument)
	session, err := signIn(c, a.Email, "the new password")
	if err != nil {
		t.Fatalf("Login with the new password: %v", err)
	}

	code = newCode(3)
	rs.ACL("-zrange", "-hdel")
	err = reset(code, "the last password")
	rs.ACL("+zrange", "+hdel")
	servertest.WantCode(t, err, connect.CodeInternal)
	servertest.WantCode(t, reset(code, "the last password"), connect.CodeAborted)
	me(t, c, session.GetAccessToken())
	clock.Advance(time.Minute + time.Second)
	if err := reset(code, "the last password"); err != nil {
		t.Fatalf("ResetPassword once the claim is over: %v", err)
	}
	if _, err := signIn(c, a.Email, "the last password"); err != nil {
		t.Fatalf("Login with the last password: %v", err)
	}
}

// A change of address under way may be the work of whoever had the old
// password: a new password, by a change or by a reset, cancels it, and
// its mailed token no longer makes that address the account's.
func TestAccountService_NewPasswordCancelsEmailChange(t *testing.T) {
	srv, mp := accountServer(t, nil)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			a := servertest.Register(t, c.Auth, servertest.UniqueName("cancel"))
			verify(t, c, mp, a, 1)
			owner, err := signIn(c, a.Username, servertest.Password)
			if err != nil {
				t.Fatal(err)
			}
			// The intruder's session (a.Token) asks for its own address.
			stolen := func(password string) string {
				t.Helper()
				evil := servertest.UniqueName("intruder") + "@example.com"
				if _, err := c.Account.ChangeEmail(ctx, servertest.WithToken(&parleyv1.ChangeEmailRequest{Password: password, NewEmail: evil}, a.Token)); err != nil {
					t.Fatalf("ChangeEmail: %v", err)
				}
				return codeIn(t, mp.WaitMail(t, evil, 1))
			}
			wantCancelled := func(token, token2 string) {
				t.Helper()
				_, err := c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: token}))
				servertest.WantCode(t, err, connect.CodeInvalidArgument)
				if m := me(t, c, token2); m.GetEmail() != a.Email || m.GetPendingEmail() != "" {
					t.Errorf("Me: email %q pending %q; want %q and none pending", m.GetEmail(), m.GetPendingEmail(), a.Email)
				}
			}

			token := stolen(servertest.Password)
			const changed = "a password of the owner's"
			if _, err := c.Account.ChangePassword(ctx, servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: changed}, owner.GetAccessToken())); err != nil {
				t.Fatalf("ChangePassword: %v", err)
			}
			wantCancelled(token, owner.GetAccessToken())

			// The same by a reset, with the intruder's session open again.
			a.Token = loginToken(t, c, a.Username, changed)
			token = stolen(changed)
			ip := newIP()
			if _, err := c.Account.RequestPasswordReset(ctx, from(&parleyv1.RequestPasswordResetRequest{Email: a.Email}, "", ip)); err != nil {
				t.Fatalf("RequestPasswordReset: %v", err)
			}
			code := codeIn(t, mp.WaitMail(t, a.Email, 4))
			if _, err := c.Account.ResetPassword(ctx, from(&parleyv1.ResetPasswordRequest{Email: a.Email, Code: code, NewPassword: "reset by the owner"}, "", ip)); err != nil {
				t.Fatalf("ResetPassword: %v", err)
			}
			wantCancelled(token, loginToken(t, c, a.Username, "reset by the owner"))

			// With no change of address under way, the token mailed to
			// the account's own address stays good.
			b := servertest.Register(t, c.Auth, servertest.UniqueName("cancel"))
			if _, err := c.Account.SendEmailVerification(ctx, servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, b.Token)); err != nil {
				t.Fatalf("SendEmailVerification: %v", err)
			}
			own := codeIn(t, mp.WaitMail(t, b.Email, 1))
			if _, err := c.Account.ChangePassword(ctx, servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: changed}, b.Token)); err != nil {
				t.Fatalf("ChangePassword: %v", err)
			}
			if _, err := c.Account.VerifyEmail(ctx, connect.NewRequest(&parleyv1.VerifyEmailRequest{Token: own})); err != nil {
				t.Errorf("VerifyEmail of the account's own address after a new password: %v", err)
			}
		})
	}
}
