package live

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/redisconn"
	"github.com/parley-chat/parley/server/servertest/proxy"
)

// TestChannels_SilentConnectionReplaced: on a single Redis, a pub/sub
// connection that went dark (a Redis host gone, a link cut without a
// reset: the pings are only queued, nothing comes back) is replaced by a
// new one, subscribed to the same channels, whose confirmation makes the
// streams read their logs.
func TestChannels_SilentConnectionReplaced(t *testing.T) {
	ctx := context.Background()
	url, direct := testRedis(t)
	if redisconn.IsCluster(direct) {
		t.Skip("on a Redis Cluster: a node's silent connection is replaced by the sharded channels, tested with the cluster")
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	px := proxy.New(t, opts.Addr)
	opts.Addr = px.Addr()
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })

	h := NewHub(slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, Config{
		Prefix: "test-silent:" + time.Now().Format("150405.000000") + ":", Heartbeat: 100 * time.Millisecond,
	})
	t.Cleanup(func() { h.Close() })
	sub, _ := h.add(ctx, auth.Identity{UserID: 1, SessionID: "s"}, "lease")
	select {
	case <-sub.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the user's channel was never subscribed")
	}
	renewed := func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		r := sub.renewed
		sub.renewed = false
		return r
	}
	renewed()

	px.Darken()
	deadline := time.Now().Add(10 * time.Second)
	for !renewed() {
		if time.Now().After(deadline) {
			t.Fatal("10 s after the pub/sub connection went dark, the channel is not subscribed again")
		}
		select {
		case <-sub.wake:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestHub_HeartbeatsWhileAnnouncingOffline: announcing offline the users
// of an instance that died, however long it takes, holds back neither
// the heartbeats of this instance's streams nor its renewals.
func TestHub_HeartbeatsWhileAnnouncingOffline(t *testing.T) {
	ctx := context.Background()
	_, rdb := testRedis(t)
	h := NewHub(slog.New(slog.NewTextHandler(io.Discard, nil)), rdb, Config{
		Prefix: "test-offline:" + time.Now().Format("150405.000000") + ":", Heartbeat: 50 * time.Millisecond,
	})
	// A user whose instance stopped renewing its presence a second ago,
	// and one with a stream here.
	const gone, here = 7, 1
	// Cleanups run last first: the announcement is released, the hub
	// stops, then its keys go.
	t.Cleanup(func() {
		rdb.Del(ctx, h.onlineKey(bucketOf(gone)), h.presenceKey(gone), h.lastSeenKey(gone))
		rdb.Del(ctx, h.onlineKey(bucketOf(here)), h.presenceKey(here), h.leasesKey(here))
	})
	t.Cleanup(func() { h.Close() })
	announcing, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	h.mu.Lock()
	h.announce = func(_ context.Context, _ int, online bool, _ time.Time) {
		if online {
			return
		}
		select {
		case <-announcing:
		default:
			close(announcing)
		}
		<-release
	}
	h.mu.Unlock()
	if err := rdb.ZAdd(ctx, h.onlineKey(bucketOf(gone)), redis.Z{Score: float64(time.Now().Add(-time.Second).UnixMilli()), Member: gone}).Err(); err != nil {
		t.Fatal(err)
	}
	sub, _ := h.add(ctx, auth.Identity{UserID: here, SessionID: "s"}, "lease")
	select {
	case <-announcing:
	case <-time.After(10 * time.Second):
		t.Fatal("the lapsed user was never announced offline")
	}
	for range 2 {
		sub.mu.Lock()
		sub.beat = false
		sub.mu.Unlock()
		deadline := time.After(10 * time.Second)
		for beat := false; !beat; {
			select {
			case <-sub.wake:
			case <-deadline:
				t.Fatal("no heartbeat while a user is being announced offline")
			}
			sub.mu.Lock()
			beat = sub.beat
			sub.mu.Unlock()
		}
	}
}

// testRedis returns the URL of the tests' Redis and a client of it.
func testRedis(t *testing.T) (string, redis.UniversalClient) {
	t.Helper()
	url := os.Getenv("PARLEY_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	rdb, err := redisconn.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("%v (set PARLEY_TEST_REDIS_URL, or run the tests with `make test`)", err)
	}
	t.Cleanup(func() { rdb.Close() })
	return url, rdb
}
