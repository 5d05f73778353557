// Package redisconn opens Parley's Redis from one URL, whether it is a
// single server or a Redis Cluster, and holds what differs between the
// two: where a write lands, how a write is made to survive a failover, how
// live events are published, and how every key is walked.
//
// The URL is go-redis's: redis://[user:password@]host:port[/db][?options],
// or rediss:// for TLS. A cluster is found by asking the server (INFO
// cluster), so the address of any one node will do; more seed nodes can
// be named with addr parameters, which also make the URL a cluster's:
//
//	redis://10.0.0.1:7000?addr=10.0.0.2:7000&addr=10.0.0.3:7000
//
// Where the nodes' own addresses (those they announce, and CLUSTER SLOTS
// lists) cannot be reached as they are, as behind NAT or a port mapping,
// nat parameters translate them, one per node: nat=ANNOUNCED,REACHABLE.
// Every connection to ANNOUNCED then goes to REACHABLE instead:
//
//	redis://10.0.0.1:7000?nat=10.0.0.1:7000,203.0.113.5:17000&nat=10.0.0.2:7000,203.0.113.5:17001
//
// On a cluster every key that Parley's scripts and transactions touch
// together carries the same hash tag ({u:<user>}, {<chat>}, {p:<bucket>}),
// so the key prefix may not contain a brace.
package redisconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Open connects to the Redis or Redis Cluster that rawURL names and checks
// that it answers.
func Open(ctx context.Context, rawURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// Not err: it quotes the URL, password and all.
		return nil, errors.New("redis url: not a valid URL")
	}
	nat, err := cutNAT(u)
	if err != nil {
		return nil, err
	}
	if nat != nil {
		rawURL = u.String()
	}
	if u.Query().Has("addr") {
		return openCluster(ctx, rawURL, nat)
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	opts.Dialer = nat.dialer(opts.DialTimeout, opts.TLSConfig)
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis: %w", err)
	}
	cluster, err := clusterEnabled(ctx, rdb)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	if !cluster {
		return rdb, nil
	}
	rdb.Close()
	if opts.DB != 0 {
		return nil, errors.New("redis url: a Redis Cluster has only database 0")
	}
	return openCluster(ctx, rawURL, nat)
}

func openCluster(ctx context.Context, rawURL string, nat natMap) (redis.UniversalClient, error) {
	opts, err := redis.ParseClusterURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis cluster url: %w", err)
	}
	opts.Dialer = nat.dialer(opts.DialTimeout, opts.TLSConfig)
	// go-redis learns that a master failed over from a MOVED answer, or
	// when its slot map is older than this; a master that died answers
	// nothing, so without the hook below its commands would fail until
	// then (the default is a minute).
	opts.ClusterStateReloadInterval = stateReloadInterval
	rdb := redis.NewClusterClient(opts)
	rdb.AddHook(reloadOnNodeError{rdb})
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis cluster: %w", err)
	}
	return rdb, nil
}

// natMap translates the addresses nodes announce into those to dial.
type natMap map[string]string

// cutNAT takes the nat parameters out of a URL (go-redis would refuse
// them) and returns them.
func cutNAT(u *url.URL) (natMap, error) {
	q := u.Query()
	if !q.Has("nat") {
		return nil, nil
	}
	nat := natMap{}
	for _, v := range q["nat"] {
		from, to, ok := strings.Cut(v, ",")
		if !ok || !validAddr(from) || !validAddr(to) {
			return nil, fmt.Errorf("redis url: nat=%s: want nat=ANNOUNCED,REACHABLE, two host:port addresses", v)
		}
		nat[from] = to
	}
	q.Del("nat")
	u.RawQuery = q.Encode()
	return nat, nil
}

func validAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	return err == nil && host != "" && port != ""
}

// dialer dials the translated address of each address it is given (as
// is without translations), as go-redis's own dialer does, with the
// connections' unacknowledged data bounded (see userTimeout).
func (m natMap) dialer(timeout time.Duration, tlsConfig *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second // go-redis's default, which it sets later
	}
	// go-redis's keep-alive (probes after 30 s idle, 3 of them 5 s apart)
	// finds a dead peer on an idle connection; userTimeout, one with data
	// in flight.
	d := &net.Dialer{
		Timeout:         timeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control:         control,
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if to, ok := m[addr]; ok {
			addr = to
		}
		if tlsConfig == nil {
			return d.DialContext(ctx, network, addr)
		}
		return (&tls.Dialer{NetDialer: d, Config: tlsConfig}).DialContext(ctx, network, addr)
	}
}

// userTimeout bounds how long data sent on a connection to Redis may stay
// unacknowledged before the kernel ends the connection (TCP_USER_TIMEOUT,
// on Linux). A link that goes dark (a dropped NAT entry, a moved virtual
// IP) otherwise keeps a pub/sub connection, whose reads have no deadline,
// open for some 15 minutes of retransmissions: the live hub's pings
// (every heartbeat of silence) then fail it within this, go-redis
// reconnects, and the hub's streams catch up. On an idle connection it
// also ends keep-alive's probing: 45 s, 30 s idle and three probes 5 s
// apart, as go-redis's own dialer has it.
const userTimeout = 45 * time.Second

// stateReloadInterval bounds how old a cluster client's slot map gets.
const stateReloadInterval = 5 * time.Second

// reloadOnNodeError has the cluster client read the slot map again when a
// node could not be reached or said the cluster is failing over, so that
// the commands after a failover go to the new master (the reload is
// asynchronous and coalesced).
type reloadOnNodeError struct{ cc *redis.ClusterClient }

func (reloadOnNodeError) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnNodeError) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if nodeTrouble(err) {
			h.cc.ReloadState(ctx)
		}
		return err
	}
}

func (h reloadOnNodeError) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if nodeTrouble(err) {
			h.cc.ReloadState(ctx)
		}
		return err
	}
}

// movedError reports whether a node answered that a slot is served
// elsewhere.
func movedError(err error) bool {
	return redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")
}

// nodeTrouble reports whether err says a node is unreachable or not
// serving its slots.
func nodeTrouble(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range []string{"CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING"} {
			if redis.HasErrorPrefix(err, p) {
				return true
			}
		}
		return false
	}
	return true
}

// clusterEnabled asks a server whether it runs in cluster mode. A server
// that answered PING but refuses INFO (miniredis knows no such section)
// is not a cluster: a cluster node that refused it would answer the
// commands for other nodes' slots with MOVED, which fails loudly.
func clusterEnabled(ctx context.Context, rdb *redis.Client) (bool, error) {
	info, err := rdb.Info(ctx, "cluster").Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) {
			return false, nil
		}
		return false, fmt.Errorf("redis: %w", err)
	}
	return strings.Contains(info, "cluster_enabled:1"), nil
}

// IsCluster reports whether rdb is a Redis Cluster's client.
func IsCluster(rdb redis.UniversalClient) bool {
	_, ok := rdb.(*redis.ClusterClient)
	return ok
}

// CheckPrefix refuses a key prefix that would take the hash tags out of
// Parley's keys: the first {...} of a key decides its cluster slot.
func CheckPrefix(prefix string) error {
	if strings.ContainsAny(prefix, "{}") {
		return fmt.Errorf("redis prefix %q: braces would change the keys' hash tags, which keep keys that change together on one cluster node", prefix)
	}
	return nil
}

// Publish is the command that publishes on a user's channel: SPUBLISH
// (sharded pub/sub, Redis 7) on a cluster, so that an event goes to the
// node that holds the user's slot only, and PUBLISH on a single server
// (which any Redis and miniredis have).
func Publish(rdb redis.UniversalClient) string {
	if IsCluster(rdb) {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// ErrNotReplicated means a write was made on the primary but not
// confirmed by as many replicas as asked within the time allowed: it may
// be lost if the primary fails now.
var ErrNotReplicated = errors.New("redis: the write was not confirmed by its replicas in time")

// Replicated queues writes (which must all touch key's slot) and sends
// them in one round trip to the primary that holds key, followed by WAIT:
// it returns once replicas replicas have them too, so that a failover
// that promotes one of them keeps them; or ErrNotReplicated, the writes
// made, after timeout. With replicas 0 it sends the writes alone.
//
// On a cluster, a master that the cluster knows no working replica of
// (its replica failed, or it took over from it) has nobody a failover
// could promote: its writes are answered after the timeout, and Redis is
// asked whether that is the case (CLUSTER NODES) only then. A replica
// that is alive but behind, or cut off from its master, still counts, and
// the writes fail.
func Replicated(ctx context.Context, rdb redis.UniversalClient, key string, replicas int, timeout time.Duration, writes func(p redis.Pipeliner)) ([]redis.Cmder, error) {
	node := rdb
	if replicas > 0 {
		// WAIT counts the replicas that have every write the connection
		// made: it has to go on the writes' connection, to their node.
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			c, err := cc.MasterForKey(ctx, key)
			if err != nil {
				return nil, fmt.Errorf("redis: the node of %s: %w", key, err)
			}
			node = c
		}
	}
	var wait *redis.Cmd
	cmds, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
		writes(p)
		if replicas > 0 {
			wait = p.Do(ctx, "wait", replicas, timeout.Milliseconds())
		}
		return nil
	})
	if err != nil {
		if cc, ok := rdb.(*redis.ClusterClient); ok && node != rdb && (nodeTrouble(err) || movedError(err)) {
			// The node client follows no redirection: a slot that moved
			// (or a master that died) has the cluster client read the
			// slot map again, for the client's retry.
			cc.ReloadState(ctx)
		}
		return cmds, err
	}
	if wait != nil {
		if n, err := wait.Int64(); err != nil || n < int64(replicas) {
			if c, ok := node.(*redis.Client); ok && IsCluster(rdb) {
				if left, err := liveReplicas(ctx, c); err == nil && left <= int(n) {
					// Every replica that could take over has them.
					return cmds, nil
				}
			}
			return cmds, ErrNotReplicated
		}
	}
	return cmds, nil
}

// liveReplicas counts the replicas of a cluster master that the cluster
// has not marked as failed: those a failover could promote.
func liveReplicas(ctx context.Context, master *redis.Client) (int, error) {
	nodes, err := master.ClusterNodes(ctx).Result()
	if err != nil {
		return 0, err
	}
	var myID string
	type line struct{ flags, master string }
	var lines []line
	for _, l := range strings.Split(nodes, "\n") {
		// <id> <ip:port@cport> <flags> <master id or -> ...
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		if slices.Contains(strings.Split(f[2], ","), "myself") {
			myID = f[0]
		}
		lines = append(lines, line{flags: f[2], master: f[3]})
	}
	if myID == "" {
		return 0, errors.New("CLUSTER NODES names no node as myself")
	}
	n := 0
	for _, l := range lines {
		flags := strings.Split(l.flags, ",")
		if l.master == myID && !slices.ContainsFunc(flags, func(f string) bool {
			return f == "fail" || f == "handshake" || f == "noaddr" || f == "nofailover"
		}) {
			n++
		}
	}
	return n, nil
}

// Ping checks that Redis answers: the one server, or at least one master
// of a cluster. A cluster with a master down serves the other masters'
// slots (and fails the down one's over within seconds): an instance that
// reaches some of it is degraded, not cut off, and every instance sees
// the same cluster, so none should leave its load balancer over it.
func Ping(ctx context.Context, rdb redis.UniversalClient) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return rdb.Ping(ctx).Err()
	}
	var mu sync.Mutex
	var answered int
	var firstErr error
	ferr := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		err := c.Ping(ctx).Err()
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			answered++
		} else if firstErr == nil {
			firstErr = err
		}
		return nil
	})
	if answered == 0 {
		if firstErr == nil {
			firstErr = ferr
		}
		if firstErr == nil {
			firstErr = errors.New("the cluster has no master")
		}
		return fmt.Errorf("redis cluster: no master answers: %w", firstErr)
	}
	return nil
}

// ForEachPrimary runs fn on every primary: the one server, or each
// cluster master (for walking every key).
func ForEachPrimary(ctx context.Context, rdb redis.UniversalClient, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	default:
		return fmt.Errorf("redis: unexpected client %T", rdb)
	}
}
