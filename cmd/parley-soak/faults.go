package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The faults the soak injects, in the order of their turns.
var faultKinds = []string{
	"instance-kill",     // kill -9 of an instance, restarted after a few seconds
	"redis-master-kill", // kill -9 of a Redis master: its replica takes over
	"ferretdb-restart",  // FerretDB killed and started again
	"engine-pg-restart", // the engine's PostgreSQL restarted in immediate mode
	"nginx-cut",         // nginx's connections to an instance closed, and new ones refused, for a while
	"redis-cut",         // an instance's connections to Redis closed, and new ones refused, for a while
}

// How long an instance stays dead and a cut lasts.
const (
	deadFor = 3 * time.Second
	cutFor  = 10 * time.Second
)

// fault is one injected fault, as the report shows it.
type fault struct {
	kind   string
	target string
	at     time.Duration // since the load started
	took   time.Duration // until it was over (the instance back, the cut mended, the node back)
	err    error
}

// inject runs the turn-th fault of kind and returns once it is over. The
// instances take each kind of fault in turns, the masters theirs.
func (d *deployment) inject(ctx context.Context, kind string, turn int) (target string, err error) {
	in := d.instances[turn%len(d.instances)]
	switch kind {
	case "instance-kill":
		target = fmt.Sprintf("instance %d", in.n)
		// Its port refuses connections while it is dead, as a dead
		// process's does (nginx then tries another instance).
		in.front.setCut(true)
		in.stop(syscall.SIGKILL)
		time.Sleep(deadFor)
		if err := in.start(ctx, d.work, d.cfg.parleyBin); err != nil {
			return target, err
		}
		return target, in.front.setCut(false)
	case "redis-master-kill":
		m, err := clusterNodes(ctx, d.rdb, true)
		if err != nil || len(m) == 0 {
			return "redis", fmt.Errorf("list masters: %v", err)
		}
		addr := m[turn%len(m)]
		_, port, _ := strings.Cut(addr, ":")
		target = "redis master " + addr
		b, err := os.ReadFile(filepath.Join(d.cfg.clusterDir, port, "redis.pid"))
		if err != nil {
			return target, err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return target, err
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return target, err
		}
		// revive waits until the dead master's slots are served by its
		// replica, then starts it again (as a replica); wait until it
		// has caught up.
		if err := d.script(ctx, "redis-cluster", "revive", d.cfg.clusterDir, port); err != nil {
			return target, err
		}
		return target, d.script(ctx, "redis-cluster", "wait", d.cfg.clusterDir)
	case "ferretdb-restart":
		return "ferretdb", d.script(ctx, "document-engine", "restart-ferretdb", d.cfg.engineDir)
	case "engine-pg-restart":
		return "engine postgresql", d.script(ctx, "document-engine", "restart-postgres", d.cfg.engineDir)
	case "nginx-cut":
		target = fmt.Sprintf("nginx → instance %d", in.n)
		in.front.setCut(true)
		time.Sleep(cutFor)
		return target, in.front.setCut(false)
	case "redis-cut":
		target = fmt.Sprintf("instance %d → redis", in.n)
		for _, p := range in.redis {
			p.setCut(true)
		}
		time.Sleep(cutFor)
		for _, p := range in.redis {
			if err := p.setCut(false); err != nil {
				return target, err
			}
		}
		return target, nil
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

// parseFaults checks a comma-separated list of fault kinds; "all" is every
// kind, "none" none.
func parseFaults(s string) ([]string, error) {
	switch s {
	case "all":
		return faultKinds, nil
	case "none", "":
		return nil, nil
	}
	var kinds []string
	for k := range strings.SplitSeq(s, ",") {
		known := false
		for _, f := range faultKinds {
			known = known || f == k
		}
		if !known {
			return nil, fmt.Errorf("unknown fault %q (known: %s)", k, strings.Join(faultKinds, ", "))
		}
		kinds = append(kinds, k)
	}
	return kinds, nil
}
