package servertest

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Redis of the test's own, for the tests that restart it or
// change how it behaves (its ACL, say): the one the other tests share
// must not change under them.
type Redis struct {
	tb   testing.TB
	bin  string
	port int
	cmd  *exec.Cmd
}

// StartRedis starts a Redis of the test's own, stopped when the test
// ends. make test installs redis-server.
func StartRedis(tb testing.TB) *Redis {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server is not installed (make test installs it): %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	r := &Redis{tb: tb, bin: bin, port: port}
	r.start()
	tb.Cleanup(r.kill)
	return r
}

// URL is the Redis's address, for app.Config.RedisURL.
func (r *Redis) URL() string { return "redis://127.0.0.1:" + strconv.Itoa(r.port) + "/0" }

// Client returns a client of the Redis, closed when the test ends.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(r.port)})
	r.tb.Cleanup(func() { c.Close() })
	return c
}

// ACL changes what the Redis lets its clients do, by ACL SETUSER on
// the default user: "-xadd" refuses XADD (so that live delivery fails),
// "+xadd" allows it again.
func (r *Redis) ACL(rules ...string) {
	r.tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(r.port)})
	defer c.Close()
	args := []any{"ACL", "SETUSER", "default"}
	for _, rule := range rules {
		args = append(args, rule)
	}
	if err := c.Do(context.Background(), args...).Err(); err != nil {
		r.tb.Fatalf("ACL SETUSER default %v: %v", rules, err)
	}
}

// Restart kills the Redis and starts it again, empty.
func (r *Redis) Restart() {
	r.tb.Helper()
	r.kill()
	r.start()
}

func (r *Redis) start() {
	r.tb.Helper()
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.tb.TempDir())
	if err := r.cmd.Start(); err != nil {
		r.tb.Fatalf("start redis: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(r.port)})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			r.tb.Fatal("redis did not start")
		}
		time.Sleep(20 * time.Millisecond) // waiting for a process to listen
	}
}

func (r *Redis) kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		r.cmd.Wait()
	}
}
