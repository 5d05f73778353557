package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// What the store does only on FerretDB 1.x, the embedded stand-in, where
// concurrent updates of one document lose writes (see doclock): there,
// the updates of a chat's lastMessage by concurrent sends would queue on
// the chat's lock, so they combine instead.

// lastOffer is a message offered as a chat's lastMessage, as kept in
// Redis.
type lastOffer struct {
	Seq      int64         `json:"seq"`
	ID       bson.ObjectID `json:"id"`
	SenderID int           `json:"sender"`
	Preview  string        `json:"preview"`
	SentAt   time.Time     `json:"sentAt"`
}

// offerScript keeps the offer with the highest seq: KEYS[1] the offer,
// ARGV seq and the offer's JSON.
var offerScript = redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'offer', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], 60000)
return 1`)

func (s *store) offerKey(chatID bson.ObjectID) string {
	return s.redisPrefix + "last:{" + chatID.Hex() + "}:offer"
}
func (s *store) appliedKey(chatID bson.ObjectID) string {
	return s.redisPrefix + "last:{" + chatID.Hex() + "}:applied"
}

// offerLastMessage moves the chat's lastMessage forward to m, holding the
// chat's lock. Each send offers its message in Redis (the highest seq
// wins), and whoever holds the lock writes the best offer, then looks
// again after letting go, so no offer is left behind. A send returns once
// a write covered its seq.
func (s *store) offerLastMessage(ctx context.Context, m *messageDoc) error {
	offer, err := json.Marshal(lastOffer{Seq: m.Seq, ID: m.ID, SenderID: m.SenderID, Preview: previewOf(m), SentAt: m.SentAt})
	if err != nil {
		return fmt.Errorf("last message offer: %w", err)
	}
	if err := offerScript.Run(ctx, s.rdb, []string{s.offerKey(m.ChatID)}, m.Seq, offer).Err(); err != nil {
		return fmt.Errorf("last message offer: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	wait := time.Millisecond
	for {
		var applied int64
		ran, err := s.locks.TryDo(ctx, chatLock(m.ChatID), func() (err error) {
			applied, err = s.applyOffer(ctx, m.ChatID)
			return err
		})
		switch {
		case err != nil:
			return err
		case ran && applied >= m.Seq:
			return nil
		case ran:
			// Redis lost our offer: make it again.
			if err := offerScript.Run(ctx, s.rdb, []string{s.offerKey(m.ChatID)}, m.Seq, offer).Err(); err != nil {
				return fmt.Errorf("last message offer: %w", err)
			}
			continue
		}
		// Another send is writing; see whether it covered ours.
		applied, err = s.rdb.Get(ctx, s.appliedKey(m.ChatID)).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("last message: %w", err)
		}
		if applied >= m.Seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("last message: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// applyOffer writes the chat's best offer, holding the chat's lock,
// records how far lastMessage is applied, and returns that seq (0 when
// Redis holds no offer).
func (s *store) applyOffer(ctx context.Context, chatID bson.ObjectID) (int64, error) {
	raw, err := s.rdb.HGet(ctx, s.offerKey(chatID), "offer").Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last message: %w", err)
	}
	var o lastOffer
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		return 0, fmt.Errorf("last message offer: %w", err)
	}
	if _, err := s.applyLast(ctx, chatID, o); err != nil {
		return 0, err
	}
	// Only upward, and short-lived: should Redis lose it, the next send
	// writes again, which raise makes harmless.
	if err := raiseAppliedScript.Run(ctx, s.rdb, []string{s.appliedKey(chatID)}, o.Seq).Err(); err != nil {
		return 0, err
	}
	return o.Seq, nil
}

var raiseAppliedScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], 60000)
return 1`)
