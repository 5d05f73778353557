package clustertest_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/redisconn"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// cluster is the Redis Cluster the tests run on, which they may break:
// every test that kills a node starts it again and waits until the
// cluster has a replica for every master once more.
type cluster struct {
	dir string
	cc  *redis.ClusterClient
}

// redisNode is one node of the cluster.
type redisNode struct {
	addr string
	port int
	pid  int
}

// newCluster returns the cluster, or skips the test when the tests do not
// run on one that scripts/redis-cluster started.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	dir := os.Getenv("PARLEY_TEST_REDIS_CLUSTER_DIR")
	if dir == "" || !servertest.SharedStores(t).RedisCluster {
		t.Skip("needs the Redis Cluster of `make test-cluster` (PARLEY_TEST_REDIS_URL and PARLEY_TEST_REDIS_CLUSTER_DIR)")
	}
	rdb, err := redisconn.Open(context.Background(), servertest.SharedStores(t).RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return &cluster{dir: dir, cc: rdb.(*redis.ClusterClient)}
}

// master is the node that serves key's slot now.
func (c *cluster) master(t *testing.T, key string) redisNode {
	t.Helper()
	ctx := context.Background()
	node, err := c.cc.MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return c.node(t, node.Options().Addr)
}

// node describes the node at addr.
func (c *cluster) node(t *testing.T, addr string) redisNode {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatalf("node %s: %v", addr, err)
	}
	n := redisNode{addr: addr, pid: infoInt(info, "process_id"), port: infoInt(info, "tcp_port")}
	if n.pid == 0 || n.port == 0 {
		t.Fatalf("node %s: no process_id or tcp_port in INFO", addr)
	}
	return n
}

// replica is master's replica.
func (c *cluster) replica(t *testing.T, master redisNode) redisNode {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: master.addr})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		// slave0:ip=127.0.0.1,port=30261,state=online,offset=...,lag=0
		if _, fields, ok := strings.Cut(sc.Text(), ":"); ok && strings.HasPrefix(sc.Text(), "slave") {
			var ip, port string
			for _, f := range strings.Split(fields, ",") {
				k, v, _ := strings.Cut(f, "=")
				switch k {
				case "ip":
					ip = v
				case "port":
					port = v
				}
			}
			return c.node(t, ip+":"+port)
		}
	}
	t.Fatalf("master %s has no replica", master.addr)
	return redisNode{}
}

func infoInt(info, field string) int {
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), field+":"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// kill kills the node with SIGKILL, and has it started again (as a
// replica by then) and the cluster whole when the test ends.
func (c *cluster) kill(t *testing.T, n redisNode) {
	t.Helper()
	if err := syscall.Kill(n.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill node %s: %v", n.addr, err)
	}
	t.Logf("killed the Redis node %s (pid %d)", n.addr, n.pid)
	t.Cleanup(func() {
		c.script(t, "revive", strconv.Itoa(n.port))
		c.script(t, "wait")
	})
}

// pause stops the node (SIGSTOP) until resume, or until the test ends.
func (c *cluster) pause(t *testing.T, n redisNode) (resume func()) {
	t.Helper()
	if err := syscall.Kill(n.pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop node %s: %v", n.addr, err)
	}
	resume = func() { _ = syscall.Kill(n.pid, syscall.SIGCONT) }
	t.Cleanup(resume)
	return resume
}

func (c *cluster) script(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command("../../scripts/redis-cluster", append([]string{args[0], c.dir}, args[1:]...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("scripts/redis-cluster %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// eventually calls f until it succeeds, for up to a minute (a failover
// takes a few seconds: the node timeout, then an election).
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after a minute: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// userKey is a key in the slot of the user's keys (sessions, event log,
// channel, stream leases).
func userKey(id int32) string { return fmt.Sprintf("x{u:%d}", id) }
