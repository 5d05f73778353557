package live

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// channels is the hub's subscription to its users' channels: one pub/sub
// connection on a single Redis, one per node on a Redis Cluster. Each
// tells the hub when a channel's subscription is active (h.subscribed),
// the first time or again after a reconnection, and hands it what is
// published (h.dispatch).
type channels interface {
	subscribe(ctx context.Context, ch string)
	unsubscribe(ctx context.Context, ch string)
	close() error
}

// receive reads ps until ctx ends. A connection that breaks, or that
// answered nothing for two heartbeats, not even a ping (errSilent), is
// reported to lost, and reading stops when lost returns false; while lost
// returns true, go-redis reconnects and subscribes the channels again,
// and reading goes on.
func (h *Hub) receive(ctx context.Context, ps *redis.PubSub, lost func(error) bool) {
	broken, pinged := false, false
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, h.cfg.Heartbeat)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if lost != nil && pinged {
					// Not even the pong came back: a node that stopped
					// (or a link that went dark) keeps its connection
					// open, and would keep its channels silent.
					err = errSilent
				} else if err := ps.Ping(ctx); err == nil {
					// Quiet for a while: make sure the connection lives.
					pinged = true
					continue
				}
			}
			if lost != nil && !lost(err) {
				return
			}
			if !broken {
				h.log.Warn("live: pub/sub connection lost; reconnecting", "err", err)
				broken = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		pinged = false
		if broken {
			h.log.Info("live: pub/sub connection restored")
			broken, backoff = false, 50*time.Millisecond
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
				h.subscribed(m.Channel)
			case "sunsubscribe":
				if lost != nil {
					lost(errSlotMoved{m.Channel})
				}
			}
		case *redis.Message:
			h.dispatch(m.Channel, m.Payload)
		}
	}
}

// errSilent reports a pub/sub connection that answered nothing, not even
// a ping, for two heartbeats.
var errSilent = errors.New("no answer to a ping within a heartbeat")

// errSlotMoved reports that a node took back a channel's subscription
// (SUNSUBSCRIBE from the server: its slot moved to another node).
type errSlotMoved struct{ channel string }

func (e errSlotMoved) Error() string { return "the slot of " + e.channel + " moved" }

// singleChannels is the one pub/sub connection of a single Redis, which
// go-redis keeps subscribed through reconnections. go-redis does not
// tell a connection that went silent (a Redis host gone, a link dark:
// the pings it sends are only queued) from a quiet one; when not even a
// ping's answer comes back within a heartbeat, the connection is
// replaced by a new one, subscribed to the same channels.
type singleChannels struct {
	h   *Hub
	ctx context.Context
	rdb redis.UniversalClient

	// mu orders the changes of ps and of the channels.
	mu     sync.Mutex
	ps     *redis.PubSub
	chans  map[string]struct{}
	closed bool
	done   sync.WaitGroup
}

func newSingleChannels(ctx context.Context, h *Hub, rdb redis.UniversalClient) *singleChannels {
	c := &singleChannels{h: h, ctx: ctx, rdb: rdb, ps: rdb.Subscribe(ctx), chans: map[string]struct{}{}}
	c.receive(c.ps)
	return c
}

// receive reads ps, until it is replaced or closed.
func (c *singleChannels) receive(ps *redis.PubSub) {
	c.done.Add(1)
	go func() {
		defer c.done.Done()
		c.h.receive(c.ctx, ps, func(err error) bool {
			if !errors.Is(err, errSilent) {
				return true // go-redis reconnects
			}
			c.h.log.Warn("live: pub/sub connection silent; replacing it", "err", err)
			go c.replace(ps)
			return false
		})
	}()
}

// replace puts a new connection, subscribed to every channel, in place
// of ps, gone silent. The confirmations make every stream read its log,
// which holds what ps missed.
func (c *singleChannels) replace(ps *redis.PubSub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.ps != ps {
		return
	}
	_ = ps.Close()
	c.ps = c.rdb.Subscribe(c.ctx)
	if len(c.chans) > 0 {
		// On failure go-redis still counts the channels as subscribed
		// and subscribes them when it connects.
		if err := c.ps.Subscribe(c.ctx, slices.Collect(maps.Keys(c.chans))...); err != nil {
			c.h.log.Warn("live: subscribe again", "channels", len(c.chans), "err", err)
		}
	}
	c.receive(c.ps)
}

func (c *singleChannels) subscribe(ctx context.Context, ch string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chans[ch] = struct{}{}
	// On failure go-redis still counts the channel as subscribed and
	// subscribes it again when it reconnects.
	if err := c.ps.Subscribe(ctx, ch); err != nil {
		c.h.log.WarnContext(ctx, "live: subscribe", "channel", ch, "err", err)
	}
}

func (c *singleChannels) unsubscribe(ctx context.Context, ch string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.chans, ch)
	if err := c.ps.Unsubscribe(ctx, ch); err != nil {
		c.h.log.WarnContext(ctx, "live: unsubscribe", "channel", ch, "err", err)
	}
}

func (c *singleChannels) close() error {
	c.mu.Lock()
	c.closed = true
	err := c.ps.Close()
	c.mu.Unlock()
	c.done.Wait()
	return err
}

// shardedChannels subscribes each channel on the cluster node that serves
// its slot (SSUBSCRIBE), with one pub/sub connection per node, so that an
// event travels to that node only. go-redis's own sharded PubSub cannot
// do this (v9.23): it connects to the first channel's node only, and on
// reconnecting subscribes every channel in one SSUBSCRIBE, which Redis
// refuses (CROSSSLOT) for channels of different slots. So a node's
// connection is never reconnected here: when it breaks (its node died,
// failed over, or went silent) or the node hands a channel back (its slot
// moved), the channels it had are routed again from the cluster's current
// slot map, one SSUBSCRIBE each; the confirmation makes their streams read
// their logs again from their cursors, so nothing published meanwhile is
// missed.
//
// Channels are placed by one goroutine (place), never under mu while it
// talks to Redis: a node that does not answer holds up its own channels,
// not the streams that open or close meanwhile.
type shardedChannels struct {
	h   *Hub
	cc  *redis.ClusterClient
	ctx context.Context

	mu      sync.Mutex
	closed  bool
	nodes   map[string]*nodeChannels // by address
	where   map[string]*nodeChannels // each placed channel's node
	pending map[string]struct{}      // channels to place
	// losses counts the connections lost less than lossWindow apart, for
	// the pause before placing their channels again.
	losses int
	lossAt time.Time
	wakeCh chan struct{}
	done   sync.WaitGroup
}

// lossWindow is how close together lost connections count as one
// trouble, whose retries back off.
const lossWindow = 5 * time.Second

// nodeChannels is the pub/sub connection to one node.
type nodeChannels struct {
	addr string
	ps   *redis.PubSub
	chs  map[string]struct{}
	gone bool
}

func newShardedChannels(ctx context.Context, h *Hub, cc *redis.ClusterClient) *shardedChannels {
	c := &shardedChannels{
		h: h, cc: cc, ctx: ctx,
		nodes:   map[string]*nodeChannels{},
		where:   map[string]*nodeChannels{},
		pending: map[string]struct{}{},
		wakeCh:  make(chan struct{}, 1),
	}
	c.done.Add(1)
	go c.placing()
	return c
}

func (c *shardedChannels) subscribe(_ context.Context, ch string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.where[ch]; ok {
		return
	}
	c.pending[ch] = struct{}{}
	c.wake()
}

func (c *shardedChannels) unsubscribe(ctx context.Context, ch string) {
	c.mu.Lock()
	delete(c.pending, ch)
	n, ok := c.where[ch]
	if !ok {
		c.mu.Unlock()
		return
	}
	delete(c.where, ch)
	delete(n.chs, ch)
	if len(n.chs) == 0 {
		c.drop(n)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if err := n.ps.SUnsubscribe(ctx, ch); err != nil {
		c.h.log.WarnContext(ctx, "live: unsubscribe", "channel", ch, "err", err)
	}
}

// drop closes a node's connection, under mu.
func (c *shardedChannels) drop(n *nodeChannels) {
	if n.gone {
		return
	}
	n.gone = true
	if c.nodes[n.addr] == n {
		delete(c.nodes, n.addr)
	}
	// Close waits for nothing: the receiver returns on its own.
	go n.ps.Close()
}

// lost is told by a node's receiver that its connection broke, or that
// the node handed a channel back; it routes the channels again. It tells
// the receiver to stop (false) unless only one channel moved.
func (c *shardedChannels) lost(n *nodeChannels, err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || n.gone {
		// Closed on purpose: its channels went elsewhere, or nowhere.
		return false
	}
	var moved errSlotMoved
	if errors.As(err, &moved) {
		if c.where[moved.channel] == n {
			delete(c.where, moved.channel)
			delete(n.chs, moved.channel)
			c.pending[moved.channel] = struct{}{}
			c.wake()
		}
		return true
	}
	if len(n.chs) > 0 {
		c.h.log.Warn("live: pub/sub connection to a cluster node lost; subscribing its channels again", "node", n.addr, "channels", len(n.chs), "err", err)
	}
	for ch := range n.chs {
		if c.where[ch] == n {
			delete(c.where, ch)
			c.pending[ch] = struct{}{}
		}
	}
	n.chs = map[string]struct{}{}
	c.drop(n)
	if now := time.Now(); now.Sub(c.lossAt) < lossWindow {
		c.losses++
	} else {
		c.losses = 1
	}
	c.lossAt = time.Now()
	c.wake()
	return false
}

// wake has the placing goroutine look at the pending channels, under mu.
func (c *shardedChannels) wake() {
	select {
	case c.wakeCh <- struct{}{}:
	default:
	}
}

// placing subscribes the pending channels as they come; while they fail,
// or their connections are lost again soon after (a failover takes a few
// seconds), with a fresh slot map each time and a growing pause.
func (c *shardedChannels) placing() {
	defer c.done.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.wakeCh:
		}
		start, warned := time.Now(), false
		for attempt := 0; ; attempt++ {
			c.mu.Lock()
			losses := c.losses
			c.mu.Unlock()
			if pause := backoff(attempt + max(losses-1, 0)); pause > 0 {
				// The slot map as the cluster has it by then (a node that
				// broke may have failed over).
				c.cc.ReloadState(c.ctx)
				select {
				case <-c.ctx.Done():
					return
				case <-time.After(pause):
				}
			}
			left, err := c.placePending()
			if left == 0 {
				if warned {
					c.h.log.Info("live: channels subscribed again", "after", time.Since(start).Round(time.Millisecond))
				}
				break
			}
			if err == nil {
				// Channels that came while this pass ran, or whose node's
				// connection was lost meanwhile: a pass of their own.
				attempt = -1
				continue
			}
			if !warned {
				c.h.log.Warn("live: channels wait for their cluster node; trying again", "channels", left, "err", err)
				warned = true
			}
		}
	}
}

// backoff is the pause before the nth attempt in a row: none for the
// first, then 50 ms doubling up to 2 s.
func backoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	return min(50*time.Millisecond<<min(n-1, 6), 2*time.Second)
}

// placePending subscribes each pending channel on its slot's node, talking
// to Redis outside mu, and trying no node again once it failed. It
// returns how many are left, and the last failure.
func (c *shardedChannels) placePending() (left int, failed error) {
	c.mu.Lock()
	chs := make([]string, 0, len(c.pending))
	for ch := range c.pending {
		chs = append(chs, ch)
	}
	c.mu.Unlock()
	down := map[string]error{}
	for _, ch := range chs {
		node, err := c.cc.MasterForKey(c.ctx, ch)
		if err != nil {
			failed = err
			continue
		}
		addr := node.Options().Addr
		if err := down[addr]; err != nil {
			continue
		}
		c.mu.Lock()
		if _, ok := c.pending[ch]; !ok || c.closed {
			c.mu.Unlock()
			continue
		}
		n := c.nodes[addr]
		if n == nil {
			n = &nodeChannels{addr: addr, ps: node.SSubscribe(c.ctx), chs: map[string]struct{}{}}
			c.nodes[addr] = n
			c.done.Add(1)
			go func() {
				defer c.done.Done()
				c.h.receive(c.ctx, n.ps, func(err error) bool { return c.lost(n, err) })
			}()
		}
		c.mu.Unlock()
		err = n.ps.SSubscribe(c.ctx, ch)
		c.mu.Lock()
		_, wanted := c.pending[ch]
		switch {
		case err != nil:
			// The connection is broken: its receiver hears of it too.
			down[addr], failed = err, err
		case n.gone:
			// Lost meanwhile: the channel stays pending.
		case !wanted:
			// Unsubscribed meanwhile.
			c.mu.Unlock()
			_ = n.ps.SUnsubscribe(c.ctx, ch)
			continue
		default:
			delete(c.pending, ch)
			n.chs[ch] = struct{}{}
			c.where[ch] = n
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending), failed
}

func (c *shardedChannels) close() error {
	c.mu.Lock()
	c.closed = true
	for _, n := range c.nodes {
		n.gone = true
		n.ps.Close()
	}
	c.nodes = map[string]*nodeChannels{}
	c.mu.Unlock()
	c.done.Wait()
	return nil
}
