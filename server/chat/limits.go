package chat

import (
	"context"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"

	"github.com/parley-chat/parley/server/rpcerr"
)

// SendLimit bounds how fast one user may send messages, over all chats
// and all instances (the budget is kept in Redis): Rate per Period on
// average, with bursts of up to Burst.
type SendLimit struct {
	// Rate is the sustained rate; 0 means DefaultSendLimit's.
	Rate int
	// Period is the unit of Rate; a second when 0. (Tests stretch it, so
	// that nothing refills while they run.)
	Period time.Duration
	// Burst is how many sends may come at once after a quiet spell; 0
	// means DefaultSendLimit's.
	Burst int
}

// DefaultSendLimit is far above what a person types (a burst of 60 lets
// a client flush a queue of messages written offline at once) and far
// below what a script can send.
var DefaultSendLimit = SendLimit{Rate: 10, Period: time.Second, Burst: 60}

func (l SendLimit) withDefaults() SendLimit {
	if l.Rate <= 0 {
		l.Rate = DefaultSendLimit.Rate
	}
	if l.Period <= 0 {
		l.Period = time.Second
	}
	if l.Burst <= 0 {
		l.Burst = DefaultSendLimit.Burst
	}
	return l
}

// LimitSends sets the send limit (DefaultSendLimit until then). It is
// meant for wiring, before the service serves.
func (s *Service) LimitSends(l SendLimit) {
	s.sendLimit = l.withDefaults()
}

// allowSend takes one send from the user's budget, or answers
// RESOURCE_EXHAUSTED with when to try again.
func (s *Service) allowSend(ctx context.Context, userID int) error {
	lim := redis_rate.Limit{Rate: s.sendLimit.Rate, Burst: s.sendLimit.Burst, Period: s.sendLimit.Period}
	res, err := s.limiter.Allow(ctx, fmt.Sprintf("%ssend:%d", s.redisPrefix, userID), lim)
	if err != nil {
		return s.internal(ctx, "send limit", err)
	}
	if res.Allowed == 0 {
		return rpcerr.TooMany("send", fmt.Sprintf("too many messages: at most %d per %s (bursts of %d)", lim.Rate, lim.Period, lim.Burst), res.RetryAfter)
	}
	return nil
}
