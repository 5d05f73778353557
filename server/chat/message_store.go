package chat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// statusSent is the seed's status field as a message is stored. Answers
// derive the current status from the members' positions instead of
// rewriting every message as they move: on FerretDB such a rewrite could
// race with a delete of the same document and undo it.
const statusSent = "sent"

// messageDoc is a document of the messages collection, in the customer's
// shape plus Parley's seq, idempotency key, and edit and delete times.
type messageDoc struct {
	ID              bson.ObjectID   `bson:"_id"`
	ChatID          bson.ObjectID   `bson:"chatId"`
	SenderID        int             `bson:"senderId"`
	Text            string          `bson:"text,omitempty"`
	Attachments     []attachmentDoc `bson:"attachments,omitempty"`
	SentAt          time.Time       `bson:"sentAt"`
	Status          string          `bson:"status"`
	Seq             int64           `bson:"seq"`
	ClientMessageID string          `bson:"clientMessageId"`
	EditedAt        *time.Time      `bson:"editedAt,omitempty"`
	DeletedAt       *time.Time      `bson:"deletedAt,omitempty"`
}

// attachmentDoc is the seed's attachment (type, url) plus what clients
// show before fetching the file.
type attachmentDoc struct {
	Type        string        `bson:"type"`
	URL         string        `bson:"url"`
	MediaID     bson.ObjectID `bson:"mediaId"`
	FileName    string        `bson:"fileName,omitempty"`
	ContentType string        `bson:"contentType,omitempty"`
	Size        int64         `bson:"size,omitempty"`
	Width       int           `bson:"width,omitempty"`
	Height      int           `bson:"height,omitempty"`
	Thumbnail   string        `bson:"thumbnailUrl,omitempty"`
}

// previewLen is how much of a message's text a chat's lastMessage keeps.
const previewLen = 100

// previewOf is a message's preview: its text, or for a message of files
// only, what they are, as in "[image]" or "[2 files]".
func previewOf(m *messageDoc) string {
	if m.Text != "" || len(m.Attachments) == 0 {
		return preview(m.Text)
	}
	kind := m.Attachments[0].Type
	for _, a := range m.Attachments[1:] {
		if a.Type != kind {
			kind = "file"
		}
	}
	if len(m.Attachments) == 1 {
		return "[" + kind + "]"
	}
	return fmt.Sprintf("[%d %ss]", len(m.Attachments), kind)
}

func preview(text string) string {
	if utf8.RuneCountInString(text) <= previewLen {
		return text
	}
	r := []rune(text)
	return string(r[:previewLen]) + "…"
}

var messageIndexes = []mongo.IndexModel{
	{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetUnique(true).SetName("chatId_seq_unique")},
	{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "senderId", Value: 1}, {Key: "clientMessageId", Value: 1}}, Options: options.Index().SetUnique(true).SetName("chatId_senderId_clientMessageId_unique")},
}

// seqAllocator hands out per-chat sequence numbers with Redis INCR. Redis
// may lose a counter (a flush, a restart without persistence); the unique
// (chatId, seq) index then refuses the repeated number, and heal moves the
// counter past the largest seq the store holds.
type seqAllocator struct {
	rdb    redis.UniversalClient
	prefix string
}

func (a *seqAllocator) key(chatID bson.ObjectID) string {
	return a.prefix + "chat:" + chatID.Hex() + ":seq"
}

func (a *seqAllocator) inflightKey(chatID bson.ObjectID) string {
	return a.prefix + "chat:" + chatID.Hex() + ":inflight"
}

// nextScript takes the chat's next seq and records it as in flight, with
// the time, until done removes it.
var nextScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[1], n)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return n
`)

// inflightTTL bounds how long a seq counts as in flight: a sender that
// died holding one stops holding readers back after this long.
const inflightTTL = 10 * time.Second

// next hands out the chat's next seq. The caller must call done with it
// once the message is stored or abandoned.
func (a *seqAllocator) next(ctx context.Context, chatID bson.ObjectID) (int64, error) {
	n, err := nextScript.Run(ctx, a.rdb, []string{a.key(chatID), a.inflightKey(chatID)},
		time.Now().UnixMilli(), inflightTTL.Milliseconds()).Int64()
	if err != nil {
		return 0, fmt.Errorf("allocate seq: %w", err)
	}
	return n, nil
}

// done marks a seq as no longer in flight.
func (a *seqAllocator) done(ctx context.Context, chatID bson.ObjectID, seq int64) error {
	if err := a.rdb.ZRem(context.WithoutCancel(ctx), a.inflightKey(chatID), seq).Err(); err != nil {
		return fmt.Errorf("release seq: %w", err)
	}
	return nil
}

// stableScript returns the largest seq up to which every message is
// written: below the lowest seq in flight, or, with none in flight, the
// counter itself (a seq handed out later is larger). -1 when Redis holds
// no counter. KEYS: the counter, the in-flight set; ARGV: the time before
// which an in-flight seq is stale. One script, so that no seq is handed
// out between looking at the two.
var stableScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local low = -1
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local n = tonumber(m)
  if n and (low < 0 or n < low) then low = n end
end
if low >= 0 then return low - 1 end
local c = redis.call('GET', KEYS[1])
if c then return tonumber(c) end
return -1
`)

// stable returns the largest seq up to which no message is still being
// written, and false when Redis knows no bound (it lost the counter).
// Messages commit out of seq order; readers that page or mark by seq stop
// at this watermark, so that a message whose insert finishes late is not
// passed over for good.
func (a *seqAllocator) stable(ctx context.Context, chatID bson.ObjectID) (int64, bool, error) {
	stale := time.Now().Add(-inflightTTL).UnixMilli()
	wm, err := stableScript.Run(ctx, a.rdb, []string{a.key(chatID), a.inflightKey(chatID)}, stale).Int64()
	if err != nil {
		return 0, false, fmt.Errorf("in-flight seqs: %w", err)
	}
	return wm, wm >= 0, nil
}

// raiseScript sets a counter to ARGV[1] unless it is larger already.
var raiseScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
`)

func (a *seqAllocator) raise(ctx context.Context, chatID bson.ObjectID, atLeast int64) error {
	if err := raiseScript.Run(ctx, a.rdb, []string{a.key(chatID)}, atLeast).Err(); err != nil {
		return fmt.Errorf("heal seq counter: %w", err)
	}
	return nil
}

// maxSeq returns the largest seq stored for the chat, 0 for none.
func (s *store) maxSeq(ctx context.Context, chatID bson.ObjectID) (int64, error) {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{{Key: "chatId", Value: chatID}},
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "seq", Value: 1}})).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("max seq: %w", err)
	}
	return m.Seq, nil
}

func (s *store) messageWithMedia(ctx context.Context, chatID, mediaID bson.ObjectID) (*messageDoc, error) {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{
		{Key: "chatId", Value: chatID}, {Key: "attachments.mediaId", Value: mediaID},
	}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find message with media: %w", err)
	}
	return &m, nil
}

func (s *store) messageByKey(ctx context.Context, chatID bson.ObjectID, senderID int, clientID string) (*messageDoc, error) {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{
		{Key: "chatId", Value: chatID}, {Key: "senderId", Value: senderID}, {Key: "clientMessageId", Value: clientID},
	}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find message by key: %w", err)
	}
	return &m, nil
}

// insertMessage stores a new message with the chat's next seq, which is
// always above floor (the chat's last seq as last read). It returns the
// stored message and whether it is new: a retry with a clientMessageId
// already used gets the first message back.
func (s *store) insertMessage(ctx context.Context, seqs *seqAllocator, m *messageDoc, floor int64) (*messageDoc, bool, error) {
	// No look-up first: the unique indexes decide, and a duplicate key
	// sends us to find out which one.
	for range 5 {
		seq, err := seqs.next(ctx, m.ChatID)
		if err != nil {
			return nil, false, err
		}
		stored, err := s.tryInsert(ctx, seqs, m, seq, floor)
		if err != nil {
			return nil, false, err
		}
		if stored {
			return m, true, nil
		}
		// Either a racing retry of this very send won, or the counter
		// fell behind the store.
		if prev, err := s.messageByKey(ctx, m.ChatID, m.SenderID, m.ClientMessageID); err != nil || prev != nil {
			return prev, false, err
		}
		top, err := s.maxSeq(ctx, m.ChatID)
		if err != nil {
			return nil, false, err
		}
		if err := seqs.raise(ctx, m.ChatID, max(top, floor)); err != nil {
			return nil, false, err
		}
	}
	return nil, false, errors.New("insert message: no free seq after 5 attempts")
}

// tryInsert stores m with seq, which it releases afterwards. It reports
// false, with no error, when the seq cannot be used: it is not above
// floor, or the insert hit a duplicate key.
func (s *store) tryInsert(ctx context.Context, seqs *seqAllocator, m *messageDoc, seq, floor int64) (stored bool, err error) {
	defer func() {
		if rerr := seqs.done(ctx, m.ChatID, seq); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if seq <= floor {
		// The counter went back (Redis lost recent writes) and this
		// number may fall in a gap below the chat's last message.
		return false, nil
	}
	m.ID, m.Seq, m.SentAt, m.Status = bson.NewObjectID(), seq, s.nowMs(), statusSent
	_, err = s.messages.InsertOne(ctx, m)
	switch {
	case err == nil:
		return true, nil
	case mongo.IsDuplicateKeyError(err):
		return false, nil
	default:
		return false, fmt.Errorf("insert message: %w", err)
	}
}

// raise makes a monotonic field of one document at least v, writing only
// where the field is smaller (or missing). It reports whether it wrote.
// Callers hold the document's lock (see store.locked): FerretDB does not
// make even this conditional update atomic.
func raise(ctx context.Context, c *mongo.Collection, id any, field string, v int64, extra bson.D) (bool, error) {
	filter := bson.D{{Key: "_id", Value: id}, {Key: "$or", Value: bson.A{
		bson.D{{Key: field, Value: bson.D{{Key: "$lt", Value: v}}}},
		bson.D{{Key: field, Value: bson.D{{Key: "$exists", Value: false}}}},
	}}}
	res, err := c.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: append(bson.D{{Key: field, Value: v}}, extra...)}})
	if err != nil {
		return false, fmt.Errorf("raise %s: %w", field, err)
	}
	return res.MatchedCount == 1, nil
}

// lastOffer is a message offered as a chat's lastMessage (see
// setLastMessage), as kept in Redis.
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

// setLastMessage moves the chat's lastMessage forward to m. Sends to one
// chat combine their updates instead of queueing on the chat's lock:
// each offers its message in Redis (the highest seq wins), and whoever
// holds the lock writes the best offer, then looks again after letting go,
// so no offer is left behind. A send returns once a write covered its seq.
func (s *store) setLastMessage(ctx context.Context, m *messageDoc) error {
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
	if _, err := raise(ctx, s.chats, chatID, "lastMessage.seq", o.Seq, bson.D{
		{Key: "lastMessage.message_id", Value: o.ID},
		{Key: "lastMessage.sender_id", Value: o.SenderID},
		{Key: "lastMessage.preview", Value: o.Preview},
		{Key: "lastMessage.sentAt", Value: o.SentAt},
		{Key: "updatedAt", Value: o.SentAt},
	}); err != nil {
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

// raisePosition moves a member's read or delivered position forward,
// creating the position if a member was added without one (a crash
// between the inserts of addMembers).
func (s *store) raisePosition(ctx context.Context, chatID bson.ObjectID, userID int, kind string, seq int64) error {
	id := positionID(chatID, userID, kind)
	return s.locked(ctx, "position:"+id, func() error {
		return s.raisePositionLocked(ctx, chatID, userID, kind, id, seq)
	})
}

func (s *store) raisePositionLocked(ctx context.Context, chatID bson.ObjectID, userID int, kind, id string, seq int64) error {
	wrote, err := raise(ctx, s.positions, id, "seq", seq, nil)
	if err != nil || wrote {
		return err
	}
	// Nothing written: the position is at least seq already, or missing.
	n, err := s.positions.CountDocuments(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return fmt.Errorf("raise position: %w", err)
	}
	if n == 1 {
		return nil
	}
	_, err = s.positions.InsertOne(ctx, positionDoc{ID: id, ChatID: chatID, UserID: userID, Kind: kind, Seq: seq})
	if err != nil {
		return fmt.Errorf("raise position: %w", err)
	}
	return nil
}

func (s *store) getMessage(ctx context.Context, chatID, id bson.ObjectID) (*messageDoc, error) {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "chatId", Value: chatID}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoMessage
	}
	if err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	return &m, nil
}

var errNoMessage = errors.New("no such message")

// listMessages returns up to limit messages after or before a seq (or the
// newest), in ascending seq order, and whether more lie beyond. With upTo
// set, messages above it are left out.
func (s *store) listMessages(ctx context.Context, chatID bson.ObjectID, before, after, upTo *int64, limit int) ([]messageDoc, bool, error) {
	filter := bson.D{{Key: "chatId", Value: chatID}}
	if upTo != nil {
		filter = append(filter, bson.E{Key: "$and", Value: bson.A{bson.D{{Key: "seq", Value: bson.D{{Key: "$lte", Value: *upTo}}}}}})
	}
	order := -1
	switch {
	case after != nil:
		filter = append(filter, bson.E{Key: "seq", Value: bson.D{{Key: "$gt", Value: *after}}})
		order = 1
	case before != nil:
		filter = append(filter, bson.E{Key: "seq", Value: bson.D{{Key: "$lt", Value: *before}}})
	}
	cur, err := s.messages.Find(ctx, filter, options.Find().
		SetSort(bson.D{{Key: "seq", Value: order}}).
		SetLimit(int64(limit+1)))
	if err != nil {
		return nil, false, fmt.Errorf("list messages: %w", err)
	}
	var out []messageDoc
	if err := cur.All(ctx, &out); err != nil {
		return nil, false, fmt.Errorf("list messages: %w", err)
	}
	more := len(out) > limit
	if more {
		out = out[:limit]
	}
	if order < 0 {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out, more, nil
}

func (s *store) editMessage(ctx context.Context, m *messageDoc, text string) error {
	if err := s.locked(ctx, "message:"+m.ID.Hex(), func() error { return s.editMessageLocked(ctx, m, text) }); err != nil {
		return err
	}
	return s.refreshPreview(ctx, m)
}

func (s *store) editMessageLocked(ctx context.Context, m *messageDoc, text string) error {
	now := s.nowMs()
	res, err := s.messages.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: m.ID}, {Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "text", Value: text}, {Key: "editedAt", Value: now}}}})
	if err != nil {
		return fmt.Errorf("edit message: %w", err)
	}
	if res.MatchedCount == 0 {
		return errNoMessage
	}
	m.Text, m.EditedAt = text, &now
	return nil
}

func (s *store) deleteMessage(ctx context.Context, m *messageDoc) error {
	now := s.nowMs()
	if err := s.locked(ctx, "message:"+m.ID.Hex(), func() error {
		_, err := s.messages.UpdateOne(ctx, bson.D{{Key: "_id", Value: m.ID}}, bson.D{
			{Key: "$set", Value: bson.D{{Key: "deletedAt", Value: now}}},
			{Key: "$unset", Value: bson.D{{Key: "text", Value: ""}, {Key: "attachments", Value: ""}}},
		})
		return err
	}); err != nil {
		return fmt.Errorf("delete message: %w", err)
	}
	m.Text, m.Attachments, m.DeletedAt = "", nil, &now
	return s.refreshPreview(ctx, m)
}

// refreshPreview updates the chat's lastMessage preview if m is the last
// message.
func (s *store) refreshPreview(ctx context.Context, m *messageDoc) error {
	return s.locked(ctx, chatLock(m.ChatID), func() error {
		_, err := s.chats.UpdateOne(ctx,
			bson.D{{Key: "_id", Value: m.ChatID}, {Key: "lastMessage.message_id", Value: m.ID}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "lastMessage.preview", Value: previewOf(m)}}}})
		if err != nil {
			return fmt.Errorf("update preview: %w", err)
		}
		return nil
	})
}
