package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/redisconn"
)

// loopback reports whether host (a name or an IP, without port or
// brackets) is this machine: localhost, 127.0.0.0/8 or ::1.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkLoopback refuses to send traffic anywhere but this machine unless
// -allow-remote: the server, and the stores the tool seeds.
func checkLoopback(cfg config) error {
	if cfg.allowRemote {
		return nil
	}
	refuse := func(flag, target string) error {
		return fmt.Errorf("%s %q is not on this machine (127.0.0.0/8, localhost, [::1]); pass -allow-remote to load it anyway", flag, target)
	}
	u, err := url.Parse(cfg.addr)
	if err != nil || u.Host == "" {
		return fmt.Errorf("-addr: want a URL such as http://127.0.0.1:8080, got %q", cfg.addr)
	}
	if !loopback(u.Hostname()) {
		return refuse("-addr", cfg.addr)
	}
	if cfg.mongoURI != "" {
		hosts, err := mongoHosts(cfg.mongoURI)
		if err != nil {
			return err
		}
		for _, h := range hosts {
			if !loopback(h) {
				return refuse("-mongo-uri", h)
			}
		}
	}
	if cfg.redisURL != "" {
		u, err := url.Parse(cfg.redisURL)
		if err != nil {
			return fmt.Errorf("-redis-url: %w", err)
		}
		if u.Scheme != "unix" && !loopback(u.Hostname()) {
			return refuse("-redis-url", u.Host)
		}
	}
	return nil
}

// mongoHosts returns the host names of a mongodb:// URI (which may list
// several, so net/url cannot parse it).
func mongoHosts(uri string) ([]string, error) {
	rest, ok := strings.CutPrefix(uri, "mongodb://")
	if !ok {
		return nil, fmt.Errorf("-mongo-uri: want mongodb://host:port/ (SRV lookups are not allowed), got %q", uri)
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		rest = rest[i+1:]
	}
	var out []string
	for _, hp := range strings.Split(rest, ",") {
		host := hp
		if h, _, err := net.SplitHostPort(hp); err == nil {
			host = h
		}
		out = append(out, strings.Trim(host, "[]"))
	}
	return out, nil
}

// stores are the server's MongoDB and Redis, opened for seeding.
type stores struct {
	db  *mongo.Database
	rdb redis.UniversalClient
}

func openStores(ctx context.Context, cfg config) (*stores, func(), error) {
	if cfg.mongoURI == "" || cfg.redisURL == "" {
		return nil, nil, errors.New("seeding needs the server's stores: set -mongo-uri and -redis-url (and -redis-prefix, -mongo-database if the server's differ from the defaults)")
	}
	mc, err := mongo.Connect(options.Client().ApplyURI(cfg.mongoURI))
	if err != nil {
		return nil, nil, fmt.Errorf("mongodb: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rdb, err := redisconn.Open(octx, cfg.redisURL)
	if err != nil {
		mc.Disconnect(ctx)
		return nil, nil, err
	}
	closeAll := func() {
		rdb.Close()
		mc.Disconnect(context.Background())
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := mc.Ping(pctx, nil); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("mongodb: %w", err)
	}
	if err := rdb.Ping(pctx).Err(); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("redis: %w", err)
	}
	return &stores{db: mc.Database(cfg.mongoDatabase), rdb: rdb}, closeAll, nil
}

// seedStore fills the store with -seed-chats chats holding -seed-messages
// messages in all, between users it registers through the API, and
// checks that a send into a seeded chat continues its seqs.
func seedStore(ctx context.Context, cfg config) error {
	if cfg.seedChats <= 0 {
		return nil
	}
	st, closeStores, err := openStores(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStores()
	users := cfg.seedUsers
	if users == 0 {
		// Enough distinct pairs for the private chats, or a few groups'
		// worth of members.
		users = 2
		for users*(users-1)/2 < cfg.seedChats {
			users++
		}
		users = max(users, 2*cfg.seedGroup)
	}
	fmt.Printf("seeding: registering %d users…\n", users)
	cs, err := register(ctx, cfg, users)
	if err != nil {
		return err
	}
	byID := map[int]*client{}
	ids := make([]int, len(cs))
	for i, c := range cs {
		ids[i] = int(c.id)
		byID[int(c.id)] = c
	}
	perChat := cfg.seedMessages / cfg.seedChats
	fmt.Printf("seeding %d chats of %d messages (%d in all)…\n", cfg.seedChats, perChat, perChat*cfg.seedChats)
	t0 := time.Now()
	res, err := chat.Seed(ctx, st.db, st.rdb, cfg.redisPrefix, chat.SeedSpec{
		UserIDs: ids, Chats: cfg.seedChats, GroupSize: cfg.seedGroup, Messages: perChat, TextBytes: cfg.textBytes, Read: true,
	})
	if err != nil {
		return err
	}
	d := time.Since(t0)
	fmt.Printf("  seeded %d messages in %.1fs (%.0f/s)\n", res.Messages, d.Seconds(), float64(res.Messages)/d.Seconds())
	c := res.Chats[len(res.Chats)-1]
	if err := checkContinues(ctx, byID[c.Members[0]], c); err != nil {
		return err
	}
	return afterSeed(ctx, cfg)
}

// afterSeed runs the -after-seed command, if any.
func afterSeed(ctx context.Context, cfg config) error {
	if cfg.afterSeed == "" {
		return nil
	}
	fmt.Printf("after seeding: %s\n", cfg.afterSeed)
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, "sh", "-c", cfg.afterSeed)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("-after-seed: %w", err)
	}
	fmt.Printf("  %.1fs\n", time.Since(t0).Seconds())
	return nil
}

// checkContinues sends one message into a seeded chat and checks that it
// takes the seq after the seeded ones.
func checkContinues(ctx context.Context, from *client, c chat.SeededChat) error {
	res, err := from.msgs.SendMessage(ctx, req(from, &parleyv1.SendMessageRequest{
		ChatId: c.ID, ClientMessageId: fmt.Sprintf("after-seed-%d", time.Now().UnixNano()), Text: "after the seed",
	}))
	if err != nil {
		return fmt.Errorf("send after seeding: %w", err)
	}
	if got := res.Msg.GetMessage().GetSeq(); got != c.LastSeq+1 {
		return fmt.Errorf("send after seeding took seq %d, want %d", got, c.LastSeq+1)
	}
	fmt.Printf("  a send into a seeded chat took seq %d, right after the seeded ones\n", c.LastSeq+1)
	return nil
}
