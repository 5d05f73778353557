package auth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/servertest"
)

func TestAuthService_Login(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]} {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			name := servertest.UniqueName("Login")
			servertest.Register(t, c.Auth, name)
			for _, login := range []string{name, strings.ToUpper(name), strings.ToLower(name) + "@EXAMPLE.COM"} {
				res, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: login, Password: servertest.Password}))
				if err != nil {
					t.Fatalf("Login(%q): %v", login, err)
				}
				if got := res.Msg.GetMe().GetUser().GetUsername(); got != name {
					t.Errorf("Login(%q) signed in %q, want %q", login, got, name)
				}
			}

			_, errWrong := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: "wrong password"}))
			servertest.WantCode(t, errWrong, connect.CodeUnauthenticated)
			_, errUnknown := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: "nobody" + name, Password: servertest.Password}))
			servertest.WantCode(t, errUnknown, connect.CodeUnauthenticated)
			if errWrong.Error() != errUnknown.Error() {
				t.Errorf("wrong password says %q, unknown login says %q; want the same answer", errWrong, errUnknown)
			}
		})
	}
}

// forge signs claims like the server's with the given method and key.
func forge(t *testing.T, method jwt.SigningMethod, key any, userID int32, sessionID string, exp time.Time) string {
	t.Helper()
	claims := jwt.MapClaims{
		"iss": "parley", "sub": strconv.Itoa(int(userID)), "sid": sessionID,
		"iat": time.Now().Unix(), "exp": exp.Unix(),
	}
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatalf("forge %s token: %v", method.Alg(), err)
	}
	return s
}

// TestAuth_BadTokens presents tokens that must not authenticate, to a call
// that would write, and checks the code and that nothing changed.
func TestAuth_BadTokens(t *testing.T) {
	clock := servertest.NewClock()
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	serverKey, err := keyring.LoadOrCreateKey(keyFile, true)
	if err != nil {
		t.Fatal(err)
	}
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.Now = clock.Now
		c.JWTKeyFile = keyFile
	}))
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	pubDER, _ := x509.MarshalPKIXPublicKey(serverKey.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	base := servertest.NewClients(srv, servertest.Protocols[0])
	acc := servertest.Register(t, base.Auth, servertest.UniqueName("victim"))
	tok, uid := acc.Tokens, acc.ID
	sid := tok.GetSessionId()
	exp := clock.Now().Add(10 * time.Minute)

	// Tokens of sessions that ended.
	loggedOut := login(t, base, uid)
	if _, err := base.Auth.Logout(context.Background(), servertest.WithToken(&parleyv1.LogoutRequest{}, loggedOut.GetAccessToken())); err != nil {
		t.Fatalf("Logout: %v", err)
	}
	revoked := login(t, base, uid)
	if _, err := base.Auth.RevokeSession(context.Background(), servertest.WithToken(&parleyv1.RevokeSessionRequest{SessionId: revoked.GetSessionId()}, tok.GetAccessToken())); err != nil {
		t.Fatalf("RevokeSession: %v", err)
	}
	expiring := login(t, base, uid)

	cases := []struct {
		name  string
		token func(t *testing.T) string
	}{
		{"no token", func(*testing.T) string { return "" }},
		{"garbage", func(*testing.T) string { return "not.a.jwt" }},
		{"signed with another key", func(*testing.T) string { return forge(t, jwt.SigningMethodEdDSA, otherKey, uid, sid, exp) }},
		{"alg none", func(*testing.T) string {
			return forge(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, uid, sid, exp)
		}},
		{"HS256 keyed with the public key", func(*testing.T) string { return forge(t, jwt.SigningMethodHS256, pubPEM, uid, sid, exp) }},
		{"RS256", func(*testing.T) string { return forge(t, jwt.SigningMethodRS256, rsaKey, uid, sid, exp) }},
		{"right key, unknown session", func(*testing.T) string {
			return forge(t, jwt.SigningMethodEdDSA, serverKey, uid, "AAAAAAAAAAAAAAAAAAAAAA", exp)
		}},
		{"right key, another user's session", func(*testing.T) string { return forge(t, jwt.SigningMethodEdDSA, serverKey, uid+1, sid, exp) }},
		{"logged-out session", func(*testing.T) string { return loggedOut.GetAccessToken() }},
		{"revoked session", func(*testing.T) string { return revoked.GetAccessToken() }},
		{"expired", func(t *testing.T) string {
			clock.Advance(16 * time.Minute)
			t.Cleanup(func() { clock.Advance(-16 * time.Minute) })
			return expiring.GetAccessToken()
		}},
	}
	for _, p := range []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]} {
		c := servertest.NewClients(srv, p)
		for _, tc := range cases {
			t.Run(p.Name+"/"+tc.name, func(t *testing.T) {
				hacked := "hacked by " + tc.name
				_, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Description: &hacked}, tc.token(t)))
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
				profile, err := srv.App.DB().Ent.Profile.Get(context.Background(), int(uid))
				if err != nil {
					t.Fatal(err)
				}
				if profile.Description != nil {
					t.Errorf("description = %q after a refused call; want it unchanged", *profile.Description)
				}
			})
		}
	}
}

// login signs the user in once more and returns the new session's tokens.
func login(t *testing.T, c servertest.Clients, userID int32) *parleyv1.Tokens {
	t.Helper()
	u, err := c.User.GetUser(context.Background(), servertest.WithToken(&parleyv1.GetUserRequest{UserId: userID}, anyToken(t, c)))
	if err != nil {
		t.Fatalf("GetUser: %v", err)
	}
	res, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: u.Msg.GetUser().GetUsername(), Password: servertest.Password}))
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	return res.Msg.GetTokens()
}

// anyToken returns the token of a throw-away account, for calls that need
// some signed-in caller.
func anyToken(t *testing.T, c servertest.Clients) string {
	t.Helper()
	return servertest.Register(t, c.Auth, servertest.UniqueName("observer")).Token
}

func TestAuthService_Refresh(t *testing.T) {
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.Now = clock.Now; c.ClientIPHeader = "X-Real-IP" }))
	refresh := func(c servertest.Clients, rt string) (*parleyv1.Tokens, error) {
		res, err := c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: rt}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetTokens(), nil
	}
	for _, p := range []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]} {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			first := servertest.Register(t, c.Auth, servertest.UniqueName("refresh")).Tokens
			res, err := c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: first.GetRefreshToken()}))
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			second := res.Msg.GetTokens()
			if second.GetSessionId() != first.GetSessionId() || second.GetRefreshToken() == first.GetRefreshToken() {
				t.Fatalf("Refresh gave %v, want a new refresh token for the same session", second)
			}
			if _, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, second.GetAccessToken())); err != nil {
				t.Fatalf("GetMe with the refreshed token: %v", err)
			}

			// Reusing the first refresh token, past the grace of a
			// retry, revokes the whole session.
			clock.Advance(auth.RefreshRetryGrace + time.Second)
			_, err = c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: first.GetRefreshToken()}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			_, err = c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, second.GetAccessToken()))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			_, err = c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: second.GetRefreshToken()}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
		})
	}
	t.Run("tampered token", func(t *testing.T) {
		c := servertest.NewClients(srv, servertest.Protocols[0])
		tok := servertest.Register(t, c.Auth, servertest.UniqueName("tamper")).Tokens
		rt := tok.GetRefreshToken()
		for _, bad := range []string{rt[:len(rt)-2] + "AA", "1.2.3", "x" + rt, strings.Replace(rt, ".0.", ".1.", 1)} {
			_, err := c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: bad}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
		}
		// The genuine token still works: forgeries did not revoke it.
		if _, err := c.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: rt})); err != nil {
			t.Errorf("genuine Refresh after forgeries: %v", err)
		}
	})
	t.Run("racing refreshes", func(t *testing.T) {
		// Refreshes of one token at once (one client's requests) make
		// one rotation: every one that succeeds gets its refresh token.
		c := servertest.NewClients(srv, servertest.Protocols[1])
		tok := servertest.Register(t, c.Auth, servertest.UniqueName("race")).Tokens
		const n = 8
		var wg sync.WaitGroup
		var mu sync.Mutex
		got := map[string]int{}
		for range n {
			wg.Go(func() {
				res, err := refresh(c, tok.GetRefreshToken())
				if err == nil {
					mu.Lock()
					got[res.GetRefreshToken()]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(got) != 1 {
			t.Errorf("%d refreshes at once with one token gave %d refresh tokens, want 1", n, len(got))
		}
	})
	t.Run("retried within the grace", func(t *testing.T) {
		// A client whose answer was lost retries with the token it has:
		// it gets the rotation's refresh token, and the session lives.
		c := servertest.NewClients(srv, servertest.Protocols[0])
		first := servertest.Register(t, c.Auth, servertest.UniqueName("retry")).Tokens
		lost, err := refresh(c, first.GetRefreshToken())
		if err != nil {
			t.Fatal(err)
		}
		// From another network: a phone that lost its answer may have
		// moved to another.
		moved := connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: first.GetRefreshToken()})
		moved.Header().Set("X-Real-IP", "2001:db8:77::1")
		res, err := c.Auth.Refresh(context.Background(), moved)
		if err != nil {
			t.Fatalf("a retry of a refresh whose answer was lost: %v", err)
		}
		retry := res.Msg.GetTokens()
		if retry.GetRefreshToken() != lost.GetRefreshToken() {
			t.Errorf("the retry got another refresh token than the rotation made")
		}
		next, err := refresh(c, retry.GetRefreshToken())
		if err != nil {
			t.Fatalf("refreshing with the retry's token: %v", err)
		}
		// The token two generations back is a reuse, grace or not.
		_, err = refresh(c, first.GetRefreshToken())
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
		_, err = c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, next.GetAccessToken()))
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
	})
	t.Run("used again by another client within the grace", func(t *testing.T) {
		// The grace is the rotating client's: a copy of the token used
		// elsewhere (another User-Agent) is a reuse.
		c := servertest.NewClients(srv, servertest.Protocols[0])
		first := servertest.Register(t, c.Auth, servertest.UniqueName("copied")).Tokens
		owner, err := refresh(c, first.GetRefreshToken())
		if err != nil {
			t.Fatal(err)
		}
		copied := connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: first.GetRefreshToken()})
		copied.Header().Set("User-Agent", "another client")
		_, err = c.Auth.Refresh(context.Background(), copied)
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
		_, err = c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, owner.GetAccessToken()))
		servertest.WantCode(t, err, connect.CodeUnauthenticated)
	})
}

func TestAuthService_Sessions(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]} {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("sessions"))
			phone, uid := acc.Tokens, acc.ID
			laptop := login(t, c, uid)
			list, err := c.Auth.ListSessions(context.Background(), servertest.WithToken(&parleyv1.ListSessionsRequest{}, laptop.GetAccessToken()))
			if err != nil {
				t.Fatalf("ListSessions: %v", err)
			}
			got := list.Msg.GetSessions()
			if len(got) != 2 || got[0].GetId() != laptop.GetSessionId() || !got[0].GetCurrent() || got[1].GetCurrent() {
				t.Fatalf("sessions = %v, want the laptop's (current) then the phone's", got)
			}
			if got[0].GetAddress() != "127.0.0.1" || got[0].GetUserAgent() == "" {
				t.Errorf("session = %v, want the client's address and user agent", got[0])
			}

			// Another user cannot revoke the phone's session.
			stranger := anyToken(t, c)
			_, err = c.Auth.RevokeSession(context.Background(), servertest.WithToken(&parleyv1.RevokeSessionRequest{SessionId: phone.GetSessionId()}, stranger))
			servertest.WantCode(t, err, connect.CodeNotFound)
			if _, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, phone.GetAccessToken())); err != nil {
				t.Fatalf("phone session after a stranger's revoke: %v", err)
			}

			if _, err := c.Auth.RevokeSession(context.Background(), servertest.WithToken(&parleyv1.RevokeSessionRequest{SessionId: phone.GetSessionId()}, laptop.GetAccessToken())); err != nil {
				t.Fatalf("RevokeSession: %v", err)
			}
			_, err = c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, phone.GetAccessToken()))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			_, err = c.Auth.RevokeSession(context.Background(), servertest.WithToken(&parleyv1.RevokeSessionRequest{SessionId: phone.GetSessionId()}, laptop.GetAccessToken()))
			servertest.WantCode(t, err, connect.CodeNotFound)
			_, err = c.Auth.RevokeSession(context.Background(), servertest.WithToken(&parleyv1.RevokeSessionRequest{SessionId: "not a session"}, laptop.GetAccessToken()))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
		})
	}
}

// TestAuth_SessionCheckedOnEveryInstance logs out through one server and
// checks that another server sharing the stores refuses the token at once.
func TestAuth_SessionCheckedOnEveryInstance(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	shareKey := servertest.WithConfig(func(c *app.Config) { c.JWTKeyFile = keyFile })
	if _, err := keyring.LoadOrCreateKey(keyFile, true); err != nil {
		t.Fatal(err)
	}
	a := servertest.NewClients(servertest.New(t, shareKey), servertest.Protocols[0])
	b := servertest.NewClients(servertest.New(t, shareKey), servertest.Protocols[1])
	tok := servertest.Register(t, a.Auth, servertest.UniqueName("multi")).Tokens
	if _, err := b.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, tok.GetAccessToken())); err != nil {
		t.Fatalf("GetMe on the other instance: %v", err)
	}
	if _, err := a.Auth.Logout(context.Background(), servertest.WithToken(&parleyv1.LogoutRequest{}, tok.GetAccessToken())); err != nil {
		t.Fatalf("Logout: %v", err)
	}
	_, err := b.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, tok.GetAccessToken()))
	servertest.WantCode(t, err, connect.CodeUnauthenticated)
}

func TestAuth_RateLimits(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		// Counters of their own, apart from the other tests' sign-ups.
		c.RedisPrefix += "ratelimits:"
		c.RateLimits = auth.RateLimits{
			LoginFailuresPerAccount: 3, LoginAttemptsPerAddress: 100, LoginWindow: time.Hour,
			RegistrationsPerAddress: 3, RegistrationWindow: time.Hour,
		}
	}))
	c := servertest.NewClients(srv, servertest.Protocols[1])
	t.Run("failed logins per account", func(t *testing.T) {
		name := servertest.UniqueName("guessme")
		servertest.Register(t, c.Auth, name)
		for range 3 {
			_, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: "guess"}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
		}
		// Even the right password is refused now, in any case of the login.
		_, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: strings.ToUpper(name), Password: servertest.Password}))
		servertest.WantCode(t, err, connect.CodeResourceExhausted)
		var cerr *connect.Error
		if errorsAs(err, &cerr) && cerr.Meta().Get("Retry-After") == "" && len(cerr.Details()) == 0 {
			t.Errorf("rate-limit error has no retry hint: %v", err)
		}
	})
	t.Run("parallel guesses do not overrun the limit", func(t *testing.T) {
		name := servertest.UniqueName("parallel")
		servertest.Register(t, c.Auth, name)
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[connect.Code]int{}
		for i := range 12 {
			login := name
			if i%2 == 1 {
				login = name + "@example.com" // the email shares the account's budget
			}
			wg.Go(func() {
				_, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: login, Password: "guess"}))
				mu.Lock()
				codes[connect.CodeOf(err)]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if got := codes[connect.CodeUnauthenticated]; got > 3 {
			t.Errorf("%d of 12 parallel guesses were checked (codes %v), want at most the limit of 3", got, codes)
		}
	})
	t.Run("registrations per address", func(t *testing.T) {
		// The two registrations above used two of the three.
		servertest.Register(t, c.Auth, servertest.UniqueName("second"))
		before := countUsers(t, srv)
		_, err := c.Auth.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
			Username: servertest.UniqueName("third"), Email: servertest.UniqueName("third") + "@example.com", Password: servertest.Password,
		}))
		servertest.WantCode(t, err, connect.CodeResourceExhausted)
		if after := countUsers(t, srv); after != before {
			t.Errorf("users: %d before, %d after; want nothing written", before, after)
		}
	})
}

// TestAuth_LoginLimitsPerAddress: failed logins lock an account only for
// the address they came from, so that a stranger's guesses do not keep
// the owner out; guesses from many addresses are bounded by the account's
// total, past which only the networks the account signed in, signed up
// or refreshed from may try, until its password changes.
func TestAuth_LoginLimitsPerAddress(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.RedisPrefix += "loginlimits:" + servertest.UniqueName("") + ":"
		c.ClientIPHeader = "X-Real-IP"
		c.RateLimits = auth.RateLimits{
			LoginFailuresPerAccount: 3, LoginFailuresPerAccountTotal: 5, LoginAttemptsPerAddress: 100, LoginWindow: time.Hour,
			RegistrationsPerAddress: 100, RegistrationWindow: time.Hour,
		}
	}))
	ctx := context.Background()
	c := servertest.NewClients(srv, servertest.Protocols[0])
	name := servertest.UniqueName("owner")
	reg := connect.NewRequest(&parleyv1.RegisterRequest{Username: name, Email: name + "@example.com", Password: servertest.Password})
	reg.Header().Set("X-Real-IP", "198.51.100.3")
	res, err := c.Auth.Register(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	session := res.Msg.GetTokens()
	password := servertest.Password
	login := func(from, password string) error {
		req := connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: password})
		req.Header().Set("X-Real-IP", from)
		_, err := c.Auth.Login(ctx, req)
		return err
	}
	for range 3 {
		servertest.WantCode(t, login("198.51.100.1", "guess"), connect.CodeUnauthenticated)
	}
	servertest.WantCode(t, login("198.51.100.1", password), connect.CodeResourceExhausted)
	if err := login("198.51.100.2", password); err != nil {
		t.Fatalf("the owner's login from another address after a stranger's guesses: %v", err)
	}
	// The total took the four attempts; one more guess spends it.
	servertest.WantCode(t, login("203.0.113.1", "guess"), connect.CodeUnauthenticated)
	servertest.WantCode(t, login("203.0.113.2", "guess"), connect.CodeResourceExhausted)
	servertest.WantCode(t, login("192.0.2.77", password), connect.CodeResourceExhausted)
	// Known: where it signed in, signed up, and refreshed its session.
	refresh := connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: session.GetRefreshToken()})
	refresh.Header().Set("X-Real-IP", "198.51.100.4")
	if _, err := c.Auth.Refresh(ctx, refresh); err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{"198.51.100.2", "198.51.100.3", "198.51.100.4"} {
		if err := login(from, password); err != nil {
			t.Errorf("the owner's login from %s, a network the account used, past its total: %v", from, err)
		}
	}
	// A new password forgets them, they were known to the old one, but
	// for the network it was changed from.
	token := anyLogin(t, c, name, "198.51.100.2")
	password = "another horse battery staple"
	change := servertest.WithToken(&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: password}, token)
	change.Header().Set("X-Real-IP", "198.51.100.5")
	if _, err := c.Account.ChangePassword(ctx, change); err != nil {
		t.Fatal(err)
	}
	servertest.WantCode(t, login("198.51.100.4", password), connect.CodeResourceExhausted)
	if err := login("198.51.100.5", password); err != nil {
		t.Errorf("a login from the network the password was changed from, past the account's total: %v", err)
	}
}

// anyLogin signs name in from the address from, and returns the access
// token.
func anyLogin(t *testing.T, c servertest.Clients, name, from string) string {
	t.Helper()
	req := connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: servertest.Password})
	req.Header().Set("X-Real-IP", from)
	res, err := c.Auth.Login(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetTokens().GetAccessToken()
}

// TestAuth_RateLimitsPerIPv6Network: the limits per address count an
// IPv6 client by its /64, which it may send from any address of; IPv4
// addresses each count alone.
func TestAuth_RateLimitsPerIPv6Network(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.RedisPrefix += "ratelimits6:" + servertest.UniqueName("") + ":"
		c.ClientIPHeader = "X-Real-IP"
		c.RateLimits = auth.RateLimits{
			LoginFailuresPerAccount: 100, LoginAttemptsPerAddress: 100, LoginWindow: time.Hour,
			RegistrationsPerAddress: 2, RegistrationWindow: time.Hour,
		}
	}))
	c := servertest.NewClients(srv, servertest.Protocols[0])
	register := func(from string) error {
		name := servertest.UniqueName("net")
		req := connect.NewRequest(&parleyv1.RegisterRequest{Username: name, Email: name + "@example.com", Password: servertest.Password})
		req.Header().Set("X-Real-IP", from)
		_, err := c.Auth.Register(context.Background(), req)
		return err
	}
	for _, tc := range []struct {
		from string
		want connect.Code // 0: registered
	}{
		{"2001:db8:1:2::1", 0},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", 0},
		{"2001:db8:1:2::3", connect.CodeResourceExhausted}, // the /64's third
		{"2001:db8:1:3::1", 0},                             // another /64
		{"192.0.2.1", 0},
		{"192.0.2.1", 0},
		{"192.0.2.1", connect.CodeResourceExhausted},
		{"192.0.2.2", 0},
	} {
		if err := register(tc.from); connect.CodeOf(err) != tc.want && (tc.want != 0 || err != nil) {
			t.Errorf("a registration from %s: %v; want %v", tc.from, err, tc.want)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "key.pem")
	if _, err := keyring.LoadOrCreateKey(path, false); err == nil {
		t.Fatal("loading a missing key without create succeeded")
	}
	k1, err := keyring.LoadOrCreateKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := keyring.LoadOrCreateKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) {
		t.Error("second load returned another key")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
}
