package push_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/push"
	"github.com/parley-chat/parley/server/redisconn"
	"github.com/parley-chat/parley/server/servertest"
)

// The internal tests work on the package's Redis too.
func init() {
	push.SetTestRedis(func(t *testing.T) (redis.UniversalClient, string) {
		t.Helper()
		st := servertest.SharedStores(t)
		rdb, err := redisconn.Open(context.Background(), st.RedisURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rdb.Close() })
		return rdb, st.RedisPrefix + servertest.UniqueName("pushint") + ":"
	})
}
