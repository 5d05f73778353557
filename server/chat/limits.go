package chat

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/go-redis/redis_rate/v10"

	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
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
	return s.allow(ctx, "send", userID, "too many messages")
}

// allow takes one call from the user's budget of a kind (its key in
// Redis), which has the send limit's rate and burst, or answers
// RESOURCE_EXHAUSTED, saying what the calls are too many of, with when to
// try again.
func (s *Service) allow(ctx context.Context, kind string, userID int, tooMany string) error {
	lim := redis_rate.Limit{Rate: s.sendLimit.Rate, Burst: s.sendLimit.Burst, Period: s.sendLimit.Period}
	res, err := s.limiter.Allow(ctx, fmt.Sprintf("%s%s:%d", s.redisPrefix, kind, userID), lim)
	if err != nil {
		return s.internal(ctx, kind+" limit", err)
	}
	if res.Allowed == 0 {
		return rpcerr.TooMany(kind, fmt.Sprintf("%s: at most %d per %s (bursts of %d)", tooMany, lim.Rate, lim.Period, lim.Burst), res.RetryAfter)
	}
	return nil
}

// limitedChanges are the calls that change messages and chats, and are
// announced to the other members, that the change limit bounds: without
// it a member could fill every other member's event log (each holds the
// latest 10,000 events) with edits, reactions or roles set again, and
// push out the events they had yet to fetch. Leaving a chat and
// declining a request are not limited: a user must always be able to get
// away.
var limitedChanges = map[string]bool{
	parleyv1connect.MessageServiceEditMessageProcedure:     true,
	parleyv1connect.MessageServiceDeleteMessageProcedure:   true,
	parleyv1connect.MessageServiceAddReactionProcedure:     true,
	parleyv1connect.MessageServiceRemoveReactionProcedure:  true,
	parleyv1connect.MessageServicePinMessageProcedure:      true,
	parleyv1connect.MessageServiceUnpinMessageProcedure:    true,
	parleyv1connect.ChatServiceCreatePrivateChatProcedure:  true,
	parleyv1connect.ChatServiceCreateGroupChatProcedure:    true,
	parleyv1connect.ChatServiceUpdateChatProcedure:         true,
	parleyv1connect.ChatServiceAddParticipantsProcedure:    true,
	parleyv1connect.ChatServiceRemoveParticipantProcedure:  true,
	parleyv1connect.ChatServiceSetParticipantRoleProcedure: true,
	parleyv1connect.ChatServiceAcceptChatRequestProcedure:  true,
	parleyv1connect.ChatServiceCreateInviteLinkProcedure:   true,
	parleyv1connect.ChatServiceRevokeInviteLinkProcedure:   true,
	parleyv1connect.ChatServiceJoinChatByInviteProcedure:   true,
}

// ChangeLimit returns the interceptor that takes each of the calls of
// limitedChanges from its caller's budget of changes: the send limit's
// rate and burst, in a budget of its own, over all instances.
func (s *Service) ChangeLimit() connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if !limitedChanges[req.Spec().Procedure] {
				return next(ctx, req)
			}
			id, err := auth.Caller(ctx)
			if err != nil {
				return nil, err
			}
			if err := s.allow(ctx, "change", id.UserID, "too many changes"); err != nil {
				return nil, err
			}
			return next(ctx, req)
		}
	})
}
