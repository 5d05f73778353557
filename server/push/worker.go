package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/parley-chat/parley/server/auth"
)

// Run runs the instance's workers (Config.Workers) until ctx is done,
// and returns once they have stopped. A job a worker had begun stays
// pending in the queue and is taken over later (Config.ClaimAfter).
func (s *Service) Run(ctx context.Context) {
	if s.cfg.Workers < 0 {
		return
	}
	var wg sync.WaitGroup
	for i := range s.cfg.Workers {
		wg.Go(func() { s.work(ctx, s.instance+"-"+strconv.Itoa(i)) })
	}
	wg.Wait()
}

// forgetConsumersAfter is how long a consumer with no pending job may stay
// idle before it is taken out of the consumer group: instances that
// stopped leave their consumers behind.
const forgetConsumersAfter = 24 * time.Hour

// work is one worker, named consumer in the consumer group.
func (s *Service) work(ctx context.Context, consumer string) {
	ready := false
	var claimed time.Time
	for ctx.Err() == nil {
		if !ready {
			if err := s.queue.ensureGroup(ctx); err != nil {
				s.log.WarnContext(ctx, "push: queue", "err", err)
				s.pause(ctx)
				continue
			}
			ready = true
		}
		now := s.cfg.Now()
		if _, err := s.queue.moveDue(ctx, now); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "push: queue", "err", err)
		}
		if now.Sub(claimed) >= s.cfg.ClaimAfter/2 {
			claimed = now
			if err := s.store.rebuildSubscribed(ctx); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "push: subscribed users", "err", err)
			}
			// Up to 16 jobs, each taken over just before it is done:
			// taken together, the last ones' idle time would run out
			// again while the first ran, and another worker would take
			// them over (and push twice).
			// (With COUNT 1, Redis looks at 10 pending jobs a call: a
			// call may take none and point further on.)
			start, taken := "0-0", 0
			for calls := 0; taken < 16 && calls < 256; calls++ {
				msgs, next, err := s.queue.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
					Stream: s.queue.jobs, Group: group, Consumer: consumer,
					MinIdle: s.cfg.ClaimAfter, Start: start, Count: 1,
				}).Result()
				if err != nil && ctx.Err() == nil {
					s.log.WarnContext(ctx, "push: take over jobs", "err", err)
				}
				for _, m := range msgs {
					s.process(ctx, m)
				}
				taken += len(msgs)
				if err != nil || next == "0-0" {
					break
				}
				start = next
			}
			if err := s.queue.dropIdleConsumers(ctx, forgetConsumersAfter); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "push: forget idle consumers", "err", err)
			}
		}
		res, err := s.queue.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: group, Consumer: consumer, Streams: []string{s.queue.jobs, ">"},
			// One job at a time: a job waits in no busy worker's hands
			// while another worker is free.
			Count: 1, Block: s.cfg.Poll,
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if strings.HasPrefix(err.Error(), "NOGROUP") {
				ready = false // Redis lost the queue (a restart without persistence)
			} else {
				s.log.WarnContext(ctx, "push: read the queue", "err", err)
			}
			s.pause(ctx)
			continue
		}
		for _, st := range res {
			for _, m := range st.Messages {
				s.process(ctx, m)
			}
		}
	}
}

// pause waits one poll interval, or until ctx is done.
func (s *Service) pause(ctx context.Context) {
	t := time.NewTimer(s.cfg.Poll)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// process does one job of the stream and takes it off. A job that fails
// goes back to the queue for later, up to Config.MaxAttempts tries; one
// cut short by ctx stays pending, for another worker to take over.
func (s *Service) process(ctx context.Context, m redis.XMessage) {
	raw, _ := m.Values["job"].(string)
	var j job
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		s.log.ErrorContext(ctx, "push: malformed job, dropped", "id", m.ID, "err", err)
	} else if err := s.handleBounded(ctx, &j); err != nil {
		if ctx.Err() != nil {
			return
		}
		s.retry(ctx, &j, 0, err)
	}
	if err := s.queue.done(ctx, m.ID); err != nil && ctx.Err() == nil {
		s.log.WarnContext(ctx, "push: queue", "err", err)
	}
}

// handleBounded does one job within half of Config.ClaimAfter, so that
// no other worker takes it over (and pushes it again) while a store that
// does not answer holds it up: one that runs out goes back to the queue
// for later. A job that panics is dropped, logged with its stack, rather
// than taken over, and panicking, on each instance in turn.
func (s *Service) handleBounded(ctx context.Context, j *job) (err error) {
	jctx, cancel := context.WithTimeout(ctx, s.cfg.ClaimAfter/2)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			s.log.ErrorContext(ctx, "push: a job panicked, dropped", "type", j.Type, "chat", j.Chat, "user", j.User,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = nil
		}
	}()
	return s.handle(jctx, j)
}

// retry queues the job again after a backoff (at least after), unless it
// had its tries.
func (s *Service) retry(ctx context.Context, j *job, after time.Duration, cause error) {
	if j.Attempt+1 >= s.cfg.MaxAttempts {
		s.log.WarnContext(ctx, "push: giving up", "type", j.Type, "chat", j.Chat, "user", j.User, "attempts", j.Attempt+1, "err", cause)
		return
	}
	wait := max(s.backoff(j.Attempt), after)
	next := *j
	next.Attempt++
	next.ID = newID() // a job in the later set once per try
	s.log.InfoContext(ctx, "push: will retry", "type", j.Type, "chat", j.Chat, "user", j.User, "attempt", next.Attempt, "in", wait, "err", cause)
	if err := s.queue.addLater(ctx, &next, s.cfg.Now().Add(wait)); err != nil {
		s.log.ErrorContext(ctx, "push: lost a job", "type", j.Type, "chat", j.Chat, "err", err)
	}
}

// handle does one job.
func (s *Service) handle(ctx context.Context, j *job) error {
	switch j.Type {
	case jobEvent:
		return s.fanOut(ctx, j)
	case jobSend:
		sub, err := s.liveSubscription(ctx, j.User, j.Sub)
		if err != nil || sub == nil {
			return err
		}
		return s.send(ctx, j.User, sub, j.Chat, j.Payload, j.Attempt, false)
	case jobFlush:
		// The window keeps its push until it went (or went back to the
		// queue): a flush cut short is done again by the worker that
		// takes the job over.
		p, err := s.store.flush(ctx, j.User, j.Sub, j.Chat, j.Kind, s.cfg.Now(), s.cfg.Window, 2*s.cfg.ClaimAfter)
		if err != nil || p == nil {
			return err
		}
		sub, err := s.liveSubscription(ctx, j.User, j.Sub)
		if err != nil {
			return err
		}
		if sub != nil {
			if err := s.send(ctx, j.User, sub, j.Chat, p, 0, true); err != nil {
				return err
			}
		}
		if err := s.store.clear(ctx, j.User, j.Sub, j.Chat, j.Kind, p); err != nil {
			// Kept, it goes only if a flush of this window runs again.
			s.log.WarnContext(ctx, "push: window", "user", j.User, "err", err)
		}
		return nil
	}
	s.log.ErrorContext(ctx, "push: unknown job, dropped", "type", j.Type)
	return nil
}

// liveSubscription returns the subscription if it still exists and its
// session is open; it removes one whose session ended.
func (s *Service) liveSubscription(ctx context.Context, uid int, id string) (*subRecord, error) {
	sub, err := s.store.get(ctx, uid, id)
	if err != nil || sub == nil {
		return nil, err
	}
	open, err := s.sessions.SessionsOpen(ctx, []auth.Identity{{UserID: uid, SessionID: sub.Session}})
	if err != nil {
		return nil, err
	}
	if !open[0] {
		return nil, s.store.removeOf(ctx, uid, sub)
	}
	return sub, nil
}
