// Command parley-soak runs Parley as a deployment runs it, puts it under a
// messenger's traffic for a set time while faults are injected on a
// schedule, and then checks that nothing was lost, stored twice or missed.
//
// It starts -instances Parley instances (default 3) of -parley-bin behind
// nginx (deploy/nginx/parley.conf, through scripts/start-nginx, with TLS),
// on the stores of scripts/with-test-services, which must run it with a
// Redis Cluster and the document engine, durable:
//
//	PARLEY_TEST_REDIS_CLUSTER=1 PARLEY_ENGINE_DURABLE=1 scripts/with-test-services \
//	    go run ./cmd/parley-soak -parley-bin bin/parley-test
//
// (`make soak` and `make test-soak` do that). nginx reaches each instance
// through a proxy of the soak's, and each instance reaches each Redis
// node through proxies of its own (nat parameters in its Redis URL), so
// that either path can be cut.
//
// The traffic: -users users (default 24), each with one device (half of
// them gRPC over HTTP/2, half Connect over HTTP/1.1) holding one live
// stream, in a private chat with a neighbour and in one of two groups.
// Each sends about -rate messages a second into its chats, one at a time,
// each with a client message id, retried after errors (and after signing
// in again) until acknowledged, as an app's outbox does; every
// -upload-every one of them uploads a 64 KiB file and sends it. A stream
// that ends is resumed from its cursor, one silent for 40 s is replaced,
// and one whose cursor expired re-syncs each chat with ListMessages, as
// the API says.
//
// The faults, one every -fault-every, in turns (-faults lists them; all
// by default): kill -9 of an instance, restarted 3 s later; kill -9 of a
// Redis master, its replica taking over (the node comes back as a
// replica); a restart of FerretDB (kill -9 and start); an immediate-mode
// restart of the engine's PostgreSQL; nginx's connections to an instance
// closed, and new ones refused, for 10 s; an instance's connections to
// Redis closed, and new ones refused, for 10 s.
//
// After -duration it stops sending, lets the last sends finish their
// retries, waits up to -drain for the streams, reads every chat's history
// and every file, and reports. It exits 1 if any of these is not zero:
// acknowledged messages missing from ListMessages; messages stored twice
// (one client message id, two messages); sends refused (an error a client
// would not retry); messages a stream missed without being told to
// re-sync; messages a re-sync did not bring; files missing or not as
// uploaded. It also reports failed and retried attempts, resumed streams,
// re-syncs, and the latency percentiles of sends and deliveries in each
// fault's window and outside them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

type config struct {
	duration    time.Duration
	faultEvery  time.Duration
	faults      []string
	users       int
	rate        float64
	uploadEvery time.Duration
	instances   int
	drain       time.Duration
	grace       time.Duration
	parleyBin   string
	nginx       string
	scripts     string
	keep        bool

	work        string
	databaseURL string
	redisURL    string
	mongoURI    string
	clusterDir  string
	engineDir   string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "parley-soak:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var c config
	fs := flag.NewFlagSet("parley-soak", flag.ContinueOnError)
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "how long the traffic runs")
	fs.DurationVar(&c.faultEvery, "fault-every", time.Minute, "the time between two faults' starts")
	faults := fs.String("faults", "all", "the faults to inject in turns, comma-separated: "+strings.Join(faultKinds, ", ")+"; all, or none")
	fs.IntVar(&c.users, "users", 24, "users, each with one device and one stream")
	fs.Float64Var(&c.rate, "rate", 0.5, "messages a second each user sends, on average")
	fs.DurationVar(&c.uploadEvery, "upload-every", 5*time.Second, "the time between two file uploads")
	fs.IntVar(&c.instances, "instances", 3, "Parley instances behind nginx")
	fs.DurationVar(&c.drain, "drain", time.Minute, "how long to wait, after the last sends, for the streams to bring everything")
	fs.DurationVar(&c.grace, "grace", time.Minute, "how long the last sends may go on being retried after the traffic stops")
	fs.StringVar(&c.parleyBin, "parley-bin", "bin/parley-test", "the server binary")
	fs.StringVar(&c.nginx, "nginx", "/usr/sbin/nginx", "nginx")
	fs.StringVar(&c.scripts, "scripts", "scripts", "the repository's scripts directory")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory (instances' logs, nginx's) even when the soak passes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if c.faults, err = parseFaults(*faults); err != nil {
		return err
	}
	if c.users < 4 || c.instances < 1 || c.rate <= 0 || c.duration <= 0 || c.faultEvery <= 0 || c.uploadEvery <= 0 {
		return errors.New("-users must be at least 4; -instances, -rate, -duration, -fault-every and -upload-every positive")
	}
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" && os.Getenv("PARLEY_TEST_REDIS_CLUSTER_DIR") != "" {
		// scripts/with-test-services found no document engine (its
		// sources are absent here): instances cannot share the
		// FerretDB each would embed. Said loudly, not failed, as
		// scripts/behind-nginx does.
		fmt.Println("parley-soak: SKIPPED: no shared document engine (PARLEY_TEST_MONGO_URI is unset; its sources are absent here), so no instances to put behind nginx")
		return nil
	}
	for _, v := range []struct {
		dst *string
		env string
	}{
		{&c.databaseURL, "PARLEY_TEST_DATABASE_URL"}, {&c.redisURL, "PARLEY_TEST_REDIS_URL"},
		{&c.mongoURI, "PARLEY_TEST_MONGO_URI"}, {&c.clusterDir, "PARLEY_TEST_REDIS_CLUSTER_DIR"},
		{&c.engineDir, "PARLEY_TEST_ENGINE_DIR"},
	} {
		if *v.dst = os.Getenv(v.env); *v.dst == "" {
			return fmt.Errorf("%s is not set: run this under PARLEY_TEST_REDIS_CLUSTER=1 PARLEY_ENGINE_DURABLE=1 scripts/with-test-services (it needs the document engine and a Redis Cluster)", v.env)
		}
	}
	if c.parleyBin, err = filepath.Abs(c.parleyBin); err != nil {
		return err
	}
	if c.scripts, err = filepath.Abs(c.scripts); err != nil {
		return err
	}
	if c.work, err = os.MkdirTemp("", "parley-soak-"); err != nil {
		return err
	}
	passed := false
	defer func() {
		if passed && !c.keep {
			os.RemoveAll(c.work)
		} else {
			fmt.Printf("logs kept in %s\n", c.work)
		}
	}()

	// However the deployment breaks, the soak ends: everything it waits
	// for has a bound, and this bounds the whole.
	ctx, cancel := context.WithTimeout(ctx, c.duration+c.grace+c.drain+10*time.Minute)
	defer cancel()
	fmt.Printf("starting %d instances behind nginx on a Redis Cluster and the document engine…\n", c.instances)
	d, err := deploy(ctx, c)
	defer d.close()
	if err != nil {
		return err
	}
	fmt.Printf("nginx on %s; registering %d users…\n", d.url, c.users)
	l, err := newLoad(ctx, c, d)
	if err != nil {
		return err
	}
	streamCtx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	var streams sync.WaitGroup
	if err := l.openStreams(streamCtx, &streams); err != nil {
		return err
	}

	fmt.Printf("traffic for %s: %.1f messages/s from each of %d users, a file every %s; faults every %s: %s\n",
		c.duration, c.rate, c.users, c.uploadEvery, c.faultEvery, strings.Join(c.faults, ", "))
	l.start = time.Now()
	trafficCtx, stopTraffic := context.WithTimeout(ctx, c.duration)
	defer stopTraffic()
	// Sends go on being retried for a grace period after the traffic
	// stops, as an app's outbox does.
	sendCtx, stopSends := context.WithTimeout(ctx, c.duration+c.grace)
	defer stopSends()
	var senders sync.WaitGroup
	for _, u := range l.users {
		senders.Go(func() { l.sender(trafficCtx, sendCtx, u) })
	}
	senders.Go(func() { l.uploader(trafficCtx, sendCtx) })
	var injected []fault
	for i := 1; ; i++ {
		at := time.Duration(i) * c.faultEvery
		if len(c.faults) == 0 || at >= c.duration {
			break
		}
		select {
		case <-trafficCtx.Done():
		case <-time.After(time.Until(l.start.Add(at))):
		}
		if trafficCtx.Err() != nil {
			break
		}
		kind := c.faults[(i-1)%len(c.faults)]
		turn := 0
		for _, f := range injected {
			if f.kind == kind {
				turn++
			}
		}
		f := fault{kind: kind, at: time.Since(l.start)}
		f.target, f.err = d.inject(ctx, kind, turn)
		f.took = time.Since(l.start) - f.at
		fmt.Printf("%7.1fs  %-18s %-32s over after %.1fs", f.at.Seconds(), kind, f.target, f.took.Seconds())
		if f.err != nil {
			fmt.Printf(": FAILED: %v", f.err)
		}
		fmt.Println()
		injected = append(injected, f)
		if f.err != nil {
			// The deployment is not what the soak says it is: stop.
			stopTraffic()
		}
	}
	<-trafficCtx.Done()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Println("traffic stopped; waiting for the last sends…")
	senders.Wait()
	// The reads back are retried as a client's are, for a while.
	vctx, cancelVerify := context.WithTimeout(ctx, c.drain+5*time.Minute)
	defer cancelVerify()
	v, err := l.verify(vctx)
	if err != nil {
		return err
	}
	stopStreams()
	streams.Wait()
	errorLines, crashes := d.logs()
	failures := l.report(v, injected, errorLines)
	failures = append(failures, crashes...)
	for _, f := range injected {
		if f.err != nil {
			failures = append(failures, fmt.Sprintf("fault %s on %s failed: %v", f.kind, f.target, f.err))
		}
	}
	if len(failures) > 0 {
		return fmt.Errorf("FAILED: %s", strings.Join(failures, "; "))
	}
	fmt.Println("PASSED")
	passed = true
	return nil
}

// verdict is what the end-of-run checks found.
type verdict struct {
	stored, missingAcked, storedTwice int
	missedUntold, resyncUnfilled      int
	notStored                         int // events whose message is not the one stored at their seq
	files, filesBad                   int
}

// verify reads every chat's history and every file once the last sends
// are over, waits for the streams to bring what is stored, and counts.
func (l *load) verify(ctx context.Context) (verdict, error) {
	var v verdict
	chats := map[string]bool{}
	for _, u := range l.users {
		for _, c := range u.chatIDs {
			chats[c] = true
		}
	}
	stored := map[string][]*parleyv1.Message{}
	for chatID := range chats {
		reader := l.members(chatID)[0]
		msgs, err := listMessages(ctx, reader, &l.stats, chatID, 0)
		if err != nil {
			return v, fmt.Errorf("list %s: %w", chatID, err)
		}
		stored[chatID] = msgs
		v.stored += len(msgs)
	}
	// Acknowledged messages missing, and messages stored twice.
	byKey := map[string]int{}
	bySeq := map[string]*parleyv1.Message{}
	for chatID, msgs := range stored {
		for _, m := range msgs {
			byKey[m.GetClientMessageId()]++
			bySeq[fmt.Sprintf("%s/%d", chatID, m.GetSeq())] = m
		}
	}
	l.mu.Lock()
	records := make([]*record, 0, len(l.records))
	for _, r := range l.records {
		records = append(records, r)
	}
	l.mu.Unlock()
	for _, r := range records {
		if r.acked {
			if m := bySeq[fmt.Sprintf("%s/%d", r.chatID, r.seq)]; m == nil || m.GetClientMessageId() != r.key {
				v.missingAcked++
				fmt.Printf("acknowledged %s (chat %s, seq %d) is not in the chat's history\n", r.key, r.chatID, r.seq)
			}
		}
	}
	for key, n := range byKey {
		if n > 1 {
			v.storedTwice += n - 1
			fmt.Printf("%s is stored %d times\n", key, n)
		}
	}
	// Every file, read back by a member who did not send it.
	for _, r := range records {
		if !r.acked || r.fileSum == nil {
			continue
		}
		v.files++
		m := bySeq[fmt.Sprintf("%s/%d", r.chatID, r.seq)]
		var reader *user
		for _, u := range l.members(r.chatID) {
			if u != r.sender {
				reader = u
			}
		}
		var sum []byte
		var err error
		if m != nil && len(m.GetAttachments()) == 1 {
			_, err = call(ctx, reader, &l.stats, func(ctx context.Context) error {
				sum, err = download(ctx, reader, m.GetAttachments()[0].GetUrl())
				return err
			})
		}
		if err != nil || string(sum) != string(r.fileSum) {
			v.filesBad++
			fmt.Printf("the file of %s does not read back as uploaded: %v\n", r.key, err)
		}
	}
	// Wait for the streams to bring everything stored.
	deadline := time.Now().Add(l.cfg.drain)
	for {
		missing := 0
		for _, s := range l.subs {
			for _, chatID := range s.u.chatIDs {
				for _, m := range stored[chatID] {
					if _, ok := s.has(chatID, m.GetSeq()); !ok {
						missing++
					}
				}
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, s := range l.subs {
		s.mu.Lock()
		resynced := s.resyncs > 0
		s.mu.Unlock()
		for _, chatID := range s.u.chatIDs {
			for _, m := range stored[chatID] {
				key, ok := s.has(chatID, m.GetSeq())
				switch {
				case !ok && resynced:
					v.resyncUnfilled++
				case !ok:
					v.missedUntold++
				case key != m.GetClientMessageId():
					v.notStored++
					fmt.Printf("user %d's stream brought %s at chat %s seq %d, where %s is stored\n", s.u.n, key, chatID, m.GetSeq(), m.GetClientMessageId())
					continue
				default:
					continue
				}
				fmt.Printf("user %d's stream never brought %s (chat %s, seq %d)\n", s.u.n, m.GetClientMessageId(), chatID, m.GetSeq())
			}
			// And nothing at a seq where nothing is stored.
			s.mu.Lock()
			for seq, key := range s.got[chatID] {
				if bySeq[fmt.Sprintf("%s/%d", chatID, seq)] == nil {
					v.notStored++
					fmt.Printf("user %d's stream brought %s at chat %s seq %d, where nothing is stored\n", s.u.n, key, chatID, seq)
				}
			}
			s.mu.Unlock()
		}
	}
	return v, nil
}

// report prints the counts and the latencies per window, and returns
// the failures.
func (l *load) report(v verdict, faults []fault, errorLines []int) []string {
	st := &l.stats
	fmt.Printf("\nsends: %d, acknowledged %d, abandoned after retrying past the grace period %d, refused %d; attempts failed and retried: %d\n",
		st.sends.Load(), st.acked.Load(), st.abandoned.Load(), st.refused.Load(), st.failedAttempts.Load())
	fmt.Printf("access tokens refreshed: %d; signed in again (refresh refused): %d\n", st.refreshes.Load(), st.relogins.Load())
	fmt.Printf("files: %d uploaded (%d attempts failed and retried, %d uploads abandoned), %d sent and read back, %d not as uploaded\n",
		st.uploads.Load(), st.uploadAttemptsFailed.Load(), st.uploadsAbandoned.Load(), v.files, v.filesBad)
	fmt.Printf("stored: %d messages; acknowledged but missing: %d; stored twice: %d\n", v.stored, v.missingAcked, v.storedTwice)
	fmt.Printf("streams: %d resumed, %d re-synced (%d re-sync reads failed), %d events delivered twice (allowed: the client keeps one per seq)\n",
		st.resumes.Load(), st.resyncs.Load(), st.resyncErrors.Load(), st.liveDuplicates.Load())
	fmt.Printf("missed without being told to re-sync: %d; missed by streams that had re-synced: %d; brought but not stored so: %d\n", v.missedUntold, v.resyncUnfilled, v.notStored)
	fmt.Printf("lines logged at level ERROR by each instance: %v\n", errorLines)

	// Latencies, by the window their first attempt fell in.
	type window struct {
		name       string
		from, to   time.Duration
		sends, dls []time.Duration
		dups       int
	}
	var windows []*window
	for i, f := range faults {
		// A fault's window lasts until it is over and 10 s more, or
		// until the next one.
		to := f.at + f.took + 10*time.Second
		if i+1 < len(faults) {
			to = min(to, faults[i+1].at)
		}
		windows = append(windows, &window{name: fmt.Sprintf("%s @%.0fs", f.kind, f.at.Seconds()), from: f.at, to: to})
	}
	calm := &window{name: "outside faults"}
	l.mu.Lock()
	for _, r := range l.records {
		w := calm
		at := r.first.Sub(l.start)
		for _, fw := range windows {
			if at >= fw.from && at < fw.to {
				w = fw
			}
		}
		if r.acked {
			w.sends = append(w.sends, r.ack.Sub(r.first))
		}
		for _, u := range l.members(r.chatID) {
			if u == r.sender {
				continue
			}
			if t, ok := l.firstIn[fmt.Sprintf("%s@%d", r.key, u.n)]; ok {
				w.dls = append(w.dls, t.Sub(r.first))
			}
		}
	}
	for _, t := range l.dupTimes {
		w := calm
		at := t.Sub(l.start)
		for _, fw := range windows {
			if at >= fw.from && at < fw.to {
				w = fw
			}
		}
		w.dups++
	}
	l.mu.Unlock()
	fmt.Printf("\n%-28s %7s %9s %9s %9s %9s %7s\n", "window", "sends", "send p50", "send p99", "deliv p50", "deliv p99", "twice")
	for _, w := range append([]*window{calm}, windows...) {
		fmt.Printf("%-28s %7d %9s %9s %9s %9s %7d\n", w.name, len(w.sends), pct(w.sends, 0.5), pct(w.sends, 0.99), pct(w.dls, 0.5), pct(w.dls, 0.99), w.dups)
	}
	fmt.Println()

	var failures []string
	for _, c := range []struct {
		n    int
		what string
	}{
		{v.missingAcked, "acknowledged messages missing"}, {v.storedTwice, "messages stored twice"},
		{int(st.refused.Load()), "sends refused"}, {int(st.abandoned.Load()), "sends never acknowledged"},
		{int(st.uploadsAbandoned.Load()), "uploads that never went through"},
		{v.missedUntold, "events missed without a re-sync"}, {v.resyncUnfilled, "events missed by streams that re-synced"},
		{v.notStored, "events for messages not stored so"}, {v.filesBad, "files not as uploaded"},
	} {
		if c.n > 0 {
			failures = append(failures, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	return failures
}

// pct is a percentile, rounded for the report.
func pct(d []time.Duration, q float64) string {
	if len(d) == 0 {
		return "-"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	// Nearest rank.
	v := s[max(0, int(math.Ceil(float64(len(s))*q))-1)]
	if v >= time.Second {
		return v.Round(10 * time.Millisecond).String()
	}
	return v.Round(100 * time.Microsecond).String()
}
