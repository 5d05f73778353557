package live

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Online reports, for each user, whether it has a live stream open on any
// instance (as presence counts it: a stream whose instance died counts
// until its presence lapses), in one round trip.
func (h *Hub) Online(ctx context.Context, userIDs []int) ([]bool, error) {
	if len(userIDs) == 0 {
		return nil, nil
	}
	now := "(" + ms(h.cfg.Now())
	counts := make([]*redis.IntCmd, len(userIDs))
	_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, uid := range userIDs {
			counts[i] = p.ZCount(ctx, h.presenceKey(uid), now, "+inf")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("live: online: %w", err)
	}
	out := make([]bool, len(userIDs))
	for i, c := range counts {
		out[i] = c.Val() > 0
	}
	return out, nil
}
