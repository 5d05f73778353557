package redisconn_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/redisconn"
)

// testRedis opens the Redis the tests use (PARLEY_TEST_REDIS_URL: one
// server, or a cluster under `make test-cluster`).
func testRedis(t *testing.T) redis.UniversalClient {
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
	return rdb
}

func TestOpen_Miniredis(t *testing.T) {
	m := miniredis.RunT(t)
	rdb, err := redisconn.Open(context.Background(), "redis://"+m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if redisconn.IsCluster(rdb) {
		t.Fatal("miniredis taken for a cluster")
	}
	if got := redisconn.Publish(rdb); got != "PUBLISH" {
		t.Fatalf("Publish = %s, want PUBLISH on one server", got)
	}
	if err := redisconn.Ping(context.Background(), rdb); err != nil {
		t.Fatal(err)
	}
}

func TestOpen_Refused(t *testing.T) {
	m := miniredis.RunT(t)
	addr := m.Addr()
	m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := redisconn.Open(ctx, "redis://:secret@"+addr); err == nil {
		t.Fatal("Open of a closed port succeeded")
	} else if strings.Contains(err.Error(), "secret") {
		t.Fatalf("the error shows the password: %v", err)
	}
	if _, err := redisconn.Open(ctx, "redis://"+addr+"?addr=::bad"); err == nil {
		t.Fatal("Open of a bad cluster URL succeeded")
	}
}

// A nat parameter sends the connections for an address elsewhere: here
// from a name that does not resolve to the server.
func TestOpen_NAT(t *testing.T) {
	m := miniredis.RunT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, err := redisconn.Open(ctx, "redis://announced.invalid:7000?nat=announced.invalid:7000,"+m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Get("k"); err != nil || got != "v" {
		t.Fatalf("the server holds k = %q, %v; want v", got, err)
	}
	for _, bad := range []string{"nat=announced.invalid:7000", "nat=a:1,b", "nat=,b:2"} {
		if _, err := redisconn.Open(ctx, "redis://"+m.Addr()+"?"+bad); err == nil {
			t.Errorf("Open with %s succeeded", bad)
		}
	}
}

func TestCheckPrefix(t *testing.T) {
	for prefix, ok := range map[string]bool{"parley:": true, "": true, "{parley}:": false, "a}": false} {
		if err := redisconn.CheckPrefix(prefix); (err == nil) != ok {
			t.Errorf("CheckPrefix(%q) = %v", prefix, err)
		}
	}
}

// On one server without replicas, a write that asks for one is made but
// reported as not replicated; on the test cluster, whose masters each
// have a replica, it is confirmed.
func TestReplicated(t *testing.T) {
	rdb := testRedis(t)
	ctx := context.Background()
	key := "redisconn_test:{r}:" + time.Now().Format(time.RFC3339Nano)
	t.Cleanup(func() { rdb.Del(context.Background(), key) })
	var set *redis.StatusCmd
	_, err := redisconn.Replicated(ctx, rdb, key, 1, 200*time.Millisecond, func(p redis.Pipeliner) {
		set = p.Set(ctx, key, "v", time.Minute)
	})
	if set.Err() != nil {
		t.Fatal(set.Err())
	}
	if got, _ := rdb.Get(ctx, key).Result(); got != "v" {
		t.Fatalf("after Replicated, %s = %q, want the write made", key, got)
	}
	switch {
	case redisconn.IsCluster(rdb) && err != nil:
		t.Fatalf("on a cluster with replicas: %v", err)
	case !redisconn.IsCluster(rdb) && !errors.Is(err, redisconn.ErrNotReplicated):
		info, _ := rdb.Info(ctx, "replication").Result()
		if !strings.Contains(info, "connected_slaves:0") {
			t.Skip("this Redis has replicas")
		}
		t.Fatalf("on one server without replicas: err = %v, want ErrNotReplicated", err)
	}
	// Asking for none sends the writes alone.
	if _, err := redisconn.Replicated(ctx, rdb, key, 0, time.Second, func(p redis.Pipeliner) { p.Del(ctx, key) }); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, key).Result(); n != 0 {
		t.Fatal("the write without replicas was not made")
	}
}
