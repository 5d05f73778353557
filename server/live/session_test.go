package live_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/servertest"
)

// signIn opens another session of u (another device): the same user with
// that session's token, and the session's tokens.
func signIn(t testing.TB, u *user) (*user, *parleyv1.Tokens) {
	t.Helper()
	res, err := u.auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: u.name, Password: servertest.Password}))
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	c := *u
	c.token = res.Msg.GetTokens().GetAccessToken()
	return &c, res.Msg.GetTokens()
}

// endsWithin returns the error the stream ends with, failing the test if
// it has not ended within d. Events before the end are dropped.
func (s *stream) endsWithin(d time.Duration) error {
	s.t.Helper()
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := s.tryNext(); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		s.t.Fatalf("the stream still runs %s later", d)
		return nil
	}
}

// wantUnauthenticated fails the test unless a stream ended with
// UNAUTHENTICATED.
func wantUnauthenticated(t testing.TB, what string, err error) {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("%s: the stream ended with %v, want UNAUTHENTICATED", what, err)
	}
}

// A session that ends (Logout, RevokeSession from another device, a
// reused refresh token), through one instance, ends that session's streams
// on the other within about a second, long before the next heartbeat
// (15 s); the streams of the user's other sessions go on.
func TestSubscribe_EndsWithSession(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob := newUser(t, a, p), newUser(t, a, p)
			dm := private(t, alice, bob)
			phone, _ := signIn(t, alice)
			laptop, laptopTokens := signIn(t, alice)
			tablet, tabletTokens := signIn(t, alice)
			keeps := subscribe(t, phone.on(b, p), "") // the session that stays
			onAliceB := subscribe(t, alice.on(b, p), "")
			onLaptopB := subscribe(t, laptop.on(b, p), "")
			onTabletB := subscribe(t, tablet.on(b, p), "")
			stillGoing := func(what string) {
				t.Helper()
				m := send(t, bob, dm, what)
				if got := keeps.message(); got.GetId() != m.GetId() {
					t.Fatalf("after %s, the other session's stream got %v, want %v", what, got, m)
				}
			}

			if _, err := alice.auth.Logout(ctx, req(alice, &parleyv1.LogoutRequest{})); err != nil {
				t.Fatalf("Logout: %v", err)
			}
			wantUnauthenticated(t, "Logout", onAliceB.endsWithin(time.Second))
			stillGoing("logout")

			if _, err := phone.auth.RevokeSession(ctx, req(phone, &parleyv1.RevokeSessionRequest{SessionId: laptopTokens.GetSessionId()})); err != nil {
				t.Fatalf("RevokeSession: %v", err)
			}
			wantUnauthenticated(t, "RevokeSession", onLaptopB.endsWithin(time.Second))
			stillGoing("revoke")

			// The tablet's refresh token, used again once the session
			// moved on past it (a retry of the refresh just made would
			// be answered, see auth.RefreshRetryGrace): the session is
			// revoked, the stream opened with its access token ends.
			refresh := connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: tabletTokens.GetRefreshToken()})
			next, err := alice.auth.Refresh(ctx, refresh)
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			if _, err := alice.auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: next.Msg.GetTokens().GetRefreshToken()})); err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			_, err = alice.auth.Refresh(ctx, refresh)
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			wantUnauthenticated(t, "refresh token reuse", onTabletB.endsWithin(time.Second))
			stillGoing("reuse")

			// The ended sessions' tokens open no new stream.
			for _, u := range []*user{alice, laptop, tablet} {
				_, err := trySubscribe(t, u.on(b, p), "")
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
			}
		})
	}
}

// A notice of a session's end that no instance heard (here: the session
// vanished from Redis without one) ends its streams at their next
// heartbeat.
func TestSubscribe_SessionGoneWithoutNotice(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.Live.Heartbeat = 100 * time.Millisecond }))
	p := servertest.Protocols[0]
	alice := newUser(t, srv, p)
	other, tokens := signIn(t, alice)
	gone := subscribe(t, other, "")
	keeps := subscribe(t, alice, "")
	key := servertest.SharedStores(t).RedisPrefix + fmt.Sprintf("{u:%d}:session:%s", alice.id, tokens.GetSessionId())
	if n, err := srv.App.Redis().Del(context.Background(), key).Result(); err != nil || n != 1 {
		t.Fatalf("delete the session %s: %d, %v", key, n, err)
	}
	wantUnauthenticated(t, "session gone", gone.endsWithin(5*time.Second))
	// A few heartbeats later the other session's stream still runs.
	for n := 0; n < 3; {
		if !keeps.s.Receive() {
			t.Fatalf("the other session's stream ended: %v", keeps.s.Err())
		}
		if keeps.s.Msg().GetEvent().GetHeartbeat() != nil {
			n++
		}
	}
}

// A stream ends with UNAUTHENTICATED when the access token it was opened
// with expires, wherever it was opened; the client refreshes and resumes
// from its cursor without losing an event.
func TestSubscribe_TokenExpires(t *testing.T) {
	// Tokens signed by short live 2-3 s (expiry times are whole seconds);
	// all instances share the signing key.
	short := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.AccessTokenTTL = 3 * time.Second }))
	other := servertest.New(t)
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob := newUser(t, other, p), newUser(t, other, p)
			dm := private(t, alice, bob)
			brief, tokens := signIn(t, alice.on(short, p))
			s := subscribe(t, brief.on(other, p), "")
			before := send(t, bob, dm, "before expiry")
			if got := s.message(); got.GetId() != before.GetId() {
				t.Fatalf("got %v, want %v", got, before)
			}
			wantUnauthenticated(t, "token expiry", s.endsWithin(5*time.Second))
			if left := time.Until(tokens.GetAccessTokenExpiresAt().AsTime()); left > 0 {
				t.Fatalf("the stream ended %s before its token expired", left)
			}

			while := send(t, bob, dm, "while away")
			res, err := brief.auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: tokens.GetRefreshToken()}))
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			brief.token = res.Msg.GetTokens().GetAccessToken()
			resumed := subscribe(t, brief.on(other, p), s.cursor)
			if got := resumed.message(); got.GetId() != while.GetId() {
				t.Fatalf("resumed and got %v, want %v", got, while)
			}
		})
	}
}

// retryDelay returns the RetryInfo delay of err, or 0 when it has none.
func retryDelay(err error) time.Duration {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return 0
	}
	for _, d := range cerr.Details() {
		if v, derr := d.Value(); derr == nil {
			if ri, ok := v.(*errdetails.RetryInfo); ok {
				return ri.GetRetryDelay().AsDuration()
			}
		}
	}
	return 0
}

// wantTooMany fails the test unless err is RESOURCE_EXHAUSTED with
// RetryInfo.
func wantTooMany(t testing.TB, what string, err error) {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeResourceExhausted || retryDelay(err) <= 0 {
		t.Fatalf("%s: %v, want RESOURCE_EXHAUSTED with RetryInfo", what, err)
	}
}

// subscribeOnceFree opens a stream as soon as a slot frees (the server
// releases a closed stream's slot once it sees the client go), failing
// the test if none frees within 10 s or a refusal is not the limit's.
func subscribeOnceFree(t testing.TB, u *user) *stream {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := trySubscribe(t, u, "")
		if err == nil {
			return s
		}
		wantTooMany(t, "while a slot frees", err)
		if time.Now().After(deadline) {
			t.Fatal("no slot freed within 10s of closing a stream")
		}
	}
}

// A session may have 10 streams open, a user 50, counted over all
// instances; the excess is refused with RESOURCE_EXHAUSTED and RetryInfo,
// takes no slot, and a slot frees when a stream closes.
func TestSubscribe_StreamLimits(t *testing.T) {
	defaults := servertest.WithConfig(func(c *app.Config) {
		c.Live.MaxStreamsPerSession, c.Live.MaxStreamsPerUser = 0, 0 // the defaults
	})
	a, b := servertest.New(t, defaults), servertest.New(t, defaults)
	const perSession, perUser = live.DefaultMaxStreamsPerSession, live.DefaultMaxStreamsPerUser
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice := newUser(t, a, p)
			on := func(u *user, i int) *user {
				if i%2 == 1 {
					return u.on(b, p)
				}
				return u.on(a, p)
			}
			var first []*stream
			for i := range perSession {
				first = append(first, subscribe(t, on(alice, i), ""))
			}
			for i := range 2 {
				_, err := trySubscribe(t, on(alice, i), "")
				wantTooMany(t, fmt.Sprintf("stream %d of a session", perSession+1), err)
			}
			// The refusals took nothing: one close frees exactly one.
			first[0].close()
			first[0] = subscribeOnceFree(t, on(alice, 0))
			_, err := trySubscribe(t, on(alice, 1), "")
			wantTooMany(t, "after a slot was taken again", err)

			// Other sessions of the user fill up to 50, on both instances.
			for range perUser/perSession - 1 {
				dev, _ := signIn(t, alice)
				for i := range perSession {
					subscribe(t, on(dev, i), "")
				}
			}
			last, _ := signIn(t, alice)
			for i := range 2 {
				_, err := trySubscribe(t, on(last, i), "")
				wantTooMany(t, fmt.Sprintf("stream %d of a user", perUser+1), err)
			}
			first[1].close()
			subscribeOnceFree(t, on(last, 1))
			_, err = trySubscribe(t, on(last, 0), "")
			wantTooMany(t, "after the user's slot was taken again", err)

			// Another user is not affected.
			subscribe(t, newUser(t, b, p), "")
		})
	}
}

// The slots of an instance that dies (here: loses Redis) come back when
// its leases lapse, three heartbeats on; until then they count.
func TestSubscribe_StreamLimitsInstanceDies(t *testing.T) {
	limits := servertest.WithConfig(func(c *app.Config) {
		c.Live.Heartbeat = 200 * time.Millisecond
		c.Live.MaxStreamsPerSession, c.Live.MaxStreamsPerUser = 2, 2
	})
	servertest.SkipOnRedisCluster(t, "a proxy in front of one node cannot cut an instance off the cluster, whose other nodes it reaches directly")
	survivor := servertest.New(t, limits)
	u, err := url.Parse(servertest.SharedStores(t).RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := servertest.NewProxy(t, u.Host)
	doomed := servertest.New(t, limits, servertest.WithConfig(func(c *app.Config) {
		c.RedisURL = "redis://" + proxy.Addr() + u.Path
	}))
	p := servertest.Protocols[0]
	alice := newUser(t, survivor, p)
	for range 2 {
		subscribe(t, alice.on(doomed, p), "")
	}
	_, err = trySubscribe(t, alice, "")
	wantTooMany(t, "the third stream", err)
	proxy.Break()
	start := time.Now()
	subscribeOnceFree(t, alice)
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Fatalf("a slot freed after %s, before the dead instance's leases lapsed", waited)
	}
	proxy.Restore()

	// The dead instance was only cut off: its two streams are open, and
	// once it reaches Redis again their leases are back, so that alice
	// has her three streams counted, and a fourth is refused.
	key := fmt.Sprintf("%s{u:%d}:streams", servertest.SharedStores(t).RedisPrefix, alice.id)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := survivor.App.Redis().ZCard(context.Background(), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of alice's 3 open streams counted 10 s after the instance reached Redis again", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = trySubscribe(t, alice, "")
	wantTooMany(t, "a stream past those counted again", err)
}
