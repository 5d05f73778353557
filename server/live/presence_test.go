package live

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/server/auth"
)

// announced records a hub's presence announcements.
type announced struct {
	mu   sync.Mutex
	said []string
}

func (a *announced) announce(_ context.Context, uid int, online bool, _ time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	what := "offline"
	if online {
		what = "online"
	}
	a.said = append(a.said, what)
}

func (a *announced) want(t *testing.T, want ...string) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !slices.Equal(a.said, want) {
		t.Fatalf("announced %v, want %v", a.said, want)
	}
}

// presenceHub returns a hub on the tests' Redis whose heartbeat never
// comes (the tests run its rounds), with its announcements, for the user
// uid whose keys it deletes at the end.
func presenceHub(t *testing.T, uid int) (*Hub, *announced) {
	t.Helper()
	return presenceHubAt(t, uid, Config{Prefix: "test-presence:" + time.Now().Format("150405.000000") + ":"})
}

// presenceHubAt is presenceHub with cfg, for another instance of a hub.
func presenceHubAt(t *testing.T, uid int, cfg Config) (*Hub, *announced) {
	t.Helper()
	_, rdb := testRedis(t)
	cfg.Heartbeat = time.Hour
	h := NewHub(slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, cfg)
	t.Cleanup(func() {
		h.Close()
		rdb.Del(context.Background(), h.onlineKey(bucketOf(uid)))
		rdb.Del(context.Background(), h.presenceKey(uid), h.lastSeenKey(uid), h.leasesKey(uid))
	})
	a := &announced{}
	h.mu.Lock()
	h.announce = a.announce
	h.mu.Unlock()
	return h, a
}

// chanceToFinish gives a call that the code under test should hold back
// half a second to finish (as it did before it was held back), and puts
// its result back in done. The test's outcome does not depend on it: it
// gives the old behaviour the chance to show.
func chanceToFinish(done chan error) {
	select {
	case err := <-done:
		done <- err
	case <-time.After(500 * time.Millisecond):
	}
}

func wantOnline(t *testing.T, h *Hub, uid int, want bool) {
	t.Helper()
	p, err := h.presence(context.Background(), []int{uid})
	if err != nil {
		t.Fatal(err)
	}
	if got := p[0].GetOnline(); got != want {
		t.Fatalf("online = %v, want %v", got, want)
	}
}

// A user whose last stream closes while a heartbeat renews its presence
// goes offline: the renewal, which read that the user had a stream, does
// not bring it back online after the user left.
func TestPresence_LeaveWhileRenewing(t *testing.T) {
	ctx := context.Background()
	const uid = 11
	h, said := presenceHub(t, uid)
	sub, _ := h.add(ctx, auth.Identity{UserID: uid, SessionID: "s"}, "lease")
	if err := h.settle(ctx, uid, false); err != nil {
		t.Fatal(err)
	}
	collected, release := make(chan struct{}), make(chan struct{})
	h.hooks.beforeRenew = func() {
		close(collected)
		<-release
	}
	renewed := make(chan error, 1)
	go func() { renewed <- h.renew(ctx) }()
	<-collected
	h.remove(sub)
	left := make(chan error, 1)
	go func() { left <- h.settle(ctx, uid, false) }()
	// The leave may finish before the renewal (it did before settle
	// waited for renewals).
	chanceToFinish(left)
	close(release)
	if err := <-renewed; err != nil {
		t.Fatal(err)
	}
	if err := <-left; err != nil {
		t.Fatal(err)
	}
	wantOnline(t, h, uid, false)
	said.want(t, "online", "offline")
}

// A user whose stream opens on an instance as its other stream there
// closes stays online, and is not announced offline, whichever of the
// two settles first.
func TestPresence_StreamOpensAsAnotherCloses(t *testing.T) {
	ctx := context.Background()
	const uid = 12
	h, said := presenceHub(t, uid)
	id := auth.Identity{UserID: uid, SessionID: "s"}
	a, _ := h.add(ctx, id, "a")
	if err := h.settle(ctx, uid, false); err != nil {
		t.Fatal(err)
	}
	if !h.remove(a) {
		t.Fatal("a was not the user's last stream")
	}
	b, first := h.add(ctx, id, "b")
	if !first {
		t.Fatal("b was not the user's first stream")
	}
	// b's settle, then a's.
	for range 2 {
		if err := h.settle(ctx, uid, false); err != nil {
			t.Fatal(err)
		}
	}
	wantOnline(t, h, uid, true)
	if err := h.renew(ctx); err != nil {
		t.Fatal(err)
	}
	wantOnline(t, h, uid, true)
	said.want(t, "online")

	h.remove(b)
	if err := h.settle(ctx, uid, false); err != nil {
		t.Fatal(err)
	}
	wantOnline(t, h, uid, false)
	said.want(t, "online", "offline")
}

// The same, with the settles running at once: the one that read that the
// user had no stream here does not take it away after the other's join.
func TestPresence_StreamOpensAsAnotherClosesAtOnce(t *testing.T) {
	ctx := context.Background()
	const uid = 14
	h, said := presenceHub(t, uid)
	id := auth.Identity{UserID: uid, SessionID: "s"}
	a, _ := h.add(ctx, id, "a")
	if err := h.settle(ctx, uid, false); err != nil {
		t.Fatal(err)
	}
	read, release := make(chan struct{}), make(chan struct{})
	h.hooks.settling = func(_ int, here bool) {
		if !here {
			close(read)
			<-release
		}
	}
	h.remove(a)
	left := make(chan error, 1)
	go func() { left <- h.settle(ctx, uid, false) }()
	<-read
	h.add(ctx, id, "b")
	joined := make(chan error, 1)
	go func() { joined <- h.settle(ctx, uid, false) }()
	// The join may finish before the leave (it did before settles of a
	// user waited for each other).
	chanceToFinish(joined)
	close(release)
	for _, c := range []chan error{left, joined} {
		if err := <-c; err != nil {
			t.Fatal(err)
		}
	}
	wantOnline(t, h, uid, true)
	said.want(t, "online", "offline", "online")
}

// A user whose presence lapsed while its instance stalled, which another
// instance announced offline, comes back online announced, not renewed
// silently.
func TestPresence_LapsedComesBackAnnounced(t *testing.T) {
	ctx := context.Background()
	const uid = 15
	h, said := presenceHub(t, uid)
	h.add(ctx, auth.Identity{UserID: uid, SessionID: "s"}, "lease")
	if err := h.settle(ctx, uid, false); err != nil {
		t.Fatal(err)
	}
	// Another instance whose clock is past the presence's expiry.
	later := time.Now().Add(4 * time.Hour) // past 3 heartbeats
	other, otherSaid := presenceHubAt(t, uid, Config{Prefix: h.cfg.Prefix, Now: func() time.Time { return later }})
	if err := other.expirePresence(ctx); err != nil {
		t.Fatal(err)
	}
	otherSaid.want(t, "offline")
	if err := h.renew(ctx); err != nil {
		t.Fatal(err)
	}
	wantOnline(t, h, uid, false)
	h.expire(ctx)
	wantOnline(t, h, uid, true)
	said.want(t, "online", "online")
	if err := h.renew(ctx); err != nil {
		t.Fatal(err)
	}
	h.expire(ctx)
	said.want(t, "online", "online")
}

// A user whose first stream's settle failed (Redis unreachable) is not
// online, nor renewed, until the next round sets its presence and
// announces it.
func TestPresence_FailedJoinRetried(t *testing.T) {
	ctx := context.Background()
	const uid = 13
	h, said := presenceHub(t, uid)
	// A stream whose settle failed: the hub has it, Redis does not.
	h.add(ctx, auth.Identity{UserID: uid, SessionID: "s"}, "lease")
	if err := h.renew(ctx); err != nil {
		t.Fatal(err)
	}
	wantOnline(t, h, uid, false)
	said.want(t)

	h.expire(ctx)
	wantOnline(t, h, uid, true)
	said.want(t, "online")
	h.expire(ctx)
	said.want(t, "online")
}
