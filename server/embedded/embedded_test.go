package embedded_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/embedded"
)

// The embedded Redis expires keys as Redis does (miniredis, left alone,
// counts TTLs down only when told to): a key set to live 300 ms is gone
// within a few seconds, and one without a TTL stays.
func TestRedis_KeysExpire(t *testing.T) {
	r, err := embedded.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "brief", "x", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "kept", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := rdb.Exists(ctx, "brief").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a key set to live 300 ms still exists after 5 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n, err := rdb.Exists(ctx, "kept").Result(); err != nil || n != 1 {
		t.Errorf("the key without a TTL: %d, %v; want it kept", n, err)
	}
}
