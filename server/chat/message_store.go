package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
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
// shape plus Parley's seq, idempotency keys, and edit and delete times.
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
	// IdemKey and SeqKey are unique: "<chat id>:<sender id>:<client
	// message id>" and "<chat id>:<seq>". Single-field unique indexes,
	// unlike unique compound ones led by chatId, stay fast on a chat with
	// many messages on FerretDB 2 + DocumentDB.
	IdemKey   string     `bson:"idemKey"`
	SeqKey    string     `bson:"seqKey"`
	EditedAt  *time.Time `bson:"editedAt,omitempty"`
	DeletedAt *time.Time `bson:"deletedAt,omitempty"`
	// ForwardedFrom is set on a forwarded message (see forward.go).
	ForwardedFrom *forwardDoc `bson:"forwardedFrom,omitempty"`
	// ReplyTo names the message of the same chat that this one answers.
	// Its quote is rendered from the original as it is when read, so
	// that it follows the original's edits and deletion.
	ReplyTo *replyDoc `bson:"replyTo,omitempty"`
	// Words are the words of the text as search matches them (see
	// searchWords); never sent to clients.
	Words []string `bson:"words,omitempty"`
	// Mentions holds the user ids of the members the message mentions,
	// and mentionAll for @all, so that one multikey index finds the
	// messages that mention a member either way.
	Mentions []int `bson:"mentions,omitempty"`
	// Emojis are the distinct emoji of the message's reactions (at most
	// MaxReactionEmoji), so that a page of messages without any asks
	// nothing of the reactions collection; ReactVer counts the changes of
	// its reactions (see parleyv1.ReactionsChanged.version).
	Emojis   []string `bson:"emojis,omitempty"`
	ReactVer int64    `bson:"reactVer,omitempty"`
}

// mentionAll stands for @all in a message's mentions: no user has id 0.
const mentionAll = 0

// replyDoc is what a reply keeps of the message it answers.
type replyDoc struct {
	MessageID bson.ObjectID `bson:"messageId"`
	Seq       int64         `bson:"seq"`
	SenderID  int           `bson:"senderId"`
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

func idemKey(chatID bson.ObjectID, senderID int, clientID string) string {
	return chatID.Hex() + ":" + strconv.Itoa(senderID) + ":" + clientID
}

func seqKey(chatID bson.ObjectID, seq int64) string {
	return chatID.Hex() + ":" + strconv.FormatInt(seq, 10)
}

// seqAllocator hands out per-chat sequence numbers with Redis INCR, and
// keeps the seqs still being written in a sorted set, so that readers can
// stop below them (see stable). Redis may lose a counter (a flush, a
// restart without persistence); the unique seqKey index then refuses the
// repeated number, and insertMessage moves the counter past the largest
// seq the store holds. So seqs stay unique per chat whatever happens to
// Redis.
type seqAllocator struct {
	rdb    redis.UniversalClient
	prefix string
	// inflight is how long a seq counts as in flight unless renewed
	// (inflightTTL when zero; tests shorten it).
	inflight time.Duration

	// held keeps the seqs this instance's sends hold in flight (see
	// keep).
	mu   sync.Mutex
	held map[heldSeq]*keeper
}

// keeper renews a held seq for its holders (more than one only when the
// seq was handed out again: Redis lost the counter while a send held it).
type keeper struct {
	timer   *time.Timer
	holders int
}

type heldSeq struct {
	chatID bson.ObjectID
	seq    int64
}

// keep keeps a seq in flight for as long as its send holds it: every
// third of inflightTTL, the seq's time in the in-flight set is renewed.
// A send slowed past inflightTTL (writes queued behind others, a slow
// engine) would otherwise stop holding readers back before its message
// is stored, and a reader that paged or marked past its seq in the
// meantime would pass over the message for good. Only a send that died
// stops renewing. Sends answered within the period make no extra call.
func (a *seqAllocator) keep(chatID bson.ObjectID, seq int64) {
	h := heldSeq{chatID, seq}
	ttl := a.ttl()
	k := &keeper{holders: 1}
	renew := func() {
		ctx, cancel := context.WithTimeout(context.Background(), ttl/3)
		defer cancel()
		key := a.inflightKey(chatID)
		// XX: a seq released meanwhile stays released. An error is left
		// to the next renewal: a send this slow is failing anyway.
		_, _ = a.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.ZAddXX(ctx, key, redis.Z{Score: float64(time.Now().UnixMilli()), Member: seq})
			p.PExpire(ctx, key, ttl)
			return nil
		})
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.held[h] == k {
			k.timer.Reset(ttl / 3)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held == nil {
		a.held = make(map[heldSeq]*keeper)
	}
	if had, ok := a.held[h]; ok {
		// The same seq handed out again: one keeper, until both sends
		// release it.
		had.holders++
		return
	}
	k.timer = time.AfterFunc(ttl/3, renew)
	a.held[h] = k
}

// ttl is how long a seq counts as in flight unless renewed.
func (a *seqAllocator) ttl() time.Duration {
	if a.inflight > 0 {
		return a.inflight
	}
	return inflightTTL
}

// release stops keeping a seq in flight (see keep).
func (a *seqAllocator) release(chatID bson.ObjectID, seq int64) {
	h := heldSeq{chatID, seq}
	a.mu.Lock()
	defer a.mu.Unlock()
	if k, ok := a.held[h]; ok {
		if k.holders--; k.holders == 0 {
			k.timer.Stop()
			delete(a.held, h)
		}
	}
}

func (a *seqAllocator) key(chatID bson.ObjectID) string {
	return a.prefix + "chat:{" + chatID.Hex() + "}:seq"
}

// versionKey is the chat's version (see sendCache).
func (a *seqAllocator) versionKey(chatID bson.ObjectID) string {
	return a.prefix + "chat:{" + chatID.Hex() + "}:ver"
}

func (a *seqAllocator) inflightKey(chatID bson.ObjectID) string {
	return a.prefix + "chat:{" + chatID.Hex() + "}:inflight"
}

// sentKey marks that a send (by its idempotency key) took a seq.
func (a *seqAllocator) sentKey(chatID bson.ObjectID, idem string) string {
	return a.prefix + "chat:{" + chatID.Hex() + "}:sent:" + idem
}

// positionsKey holds a mirror of a member's read and delivered positions
// (fields r and d): written after MongoDB's, and only ever raised, so it
// is never ahead of them; it may lag, or be missing. The seq script reads
// it, so that a send knows at no extra round trip whether the sender had
// read everything before it (then nobody's ticks move).
func (a *seqAllocator) positionsKey(chatID bson.ObjectID, userID int) string {
	return a.prefix + "chat:{" + chatID.Hex() + "}:positions:" + strconv.Itoa(userID)
}

// announcedKey holds the member's positions as last announced (see
// announcedPositions), until positionsTTL after.
func (a *seqAllocator) announcedKey(chatID bson.ObjectID, userID int) string {
	return a.prefix + "chat:{" + chatID.Hex() + "}:announced:" + strconv.Itoa(userID)
}

// announcedPositions is the value of announcedKey for a member's
// positions.
func announcedPositions(read, delivered int64) string {
	return strconv.FormatInt(read, 10) + ":" + strconv.FormatInt(delivered, 10)
}

// positionsTTL is how long a member's mirrored positions last unless
// raised again.
const positionsTTL = 7 * 24 * time.Hour

// raisePositionsScript raises the mirrored positions (KEYS[1]) to ARGV[1]
// (read) and ARGV[2] (delivered) where they are lower, and sets the TTL
// (ARGV[3], ms).
var raisePositionsScript = redis.NewScript(`
for i, f in ipairs({'r', 'd'}) do
  local v = tonumber(ARGV[i])
  if tonumber(redis.call('HGET', KEYS[1], f) or '-1') < v then redis.call('HSET', KEYS[1], f, v) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// queueRaisePositions queues, on p, the raise of the member's mirrored
// positions to read and delivered, which MongoDB has already. The script
// goes whole (EVAL, which Redis compiles once): a pipeline cannot fall
// back from an EVALSHA that a restarted Redis no longer knows.
func (a *seqAllocator) queueRaisePositions(ctx context.Context, p redis.Pipeliner, chatID bson.ObjectID, userID int, read, delivered int64) {
	raisePositionsScript.Eval(ctx, p, []string{a.positionsKey(chatID, userID)}, read, delivered, positionsTTL.Milliseconds())
}

// nextScript takes the chat's next seq and records it as in flight, with
// the time, until done removes it; and marks the send (KEYS[3]) as having
// taken it. It returns 0 instead when the send is marked already (unless
// ARGV[4] is 1): an earlier attempt took a seq. With the seq it returns
// the lower of the sender's mirrored positions (KEYS[4]), -1 when unknown.
// It returns -1 instead, and takes nothing, when ARGV[5] is a version of
// the chat (see sendCache) that is no longer its version (KEYS[5]).
// KEYS: the counter, the in-flight set, the send's mark, the sender's
// positions, the chat's version; ARGV: now (ms), the in-flight TTL and
// the mark's TTL (ms), force, the version the send's checks read ("":
// none).
var nextScript = redis.NewScript(`
local r = redis.call('HMGET', KEYS[4], 'r', 'd')
local pos = -1
if r[1] and r[2] then pos = math.min(tonumber(r[1]), tonumber(r[2])) end
if ARGV[5] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[5] then return {-1, pos} end
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {0, pos} end
local n = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], ARGV[1], n)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], n, 'PX', ARGV[3])
return {n, pos}
`)

// sentTTL is how long a send stays marked as having taken a seq: retries
// come within seconds or minutes, and the marks of a busy server's
// messages must not fill Redis. A retry later than that still finds its
// message (by the unique idempotency key), but takes a seq and gives it
// back, which leaves a gap if another send took the next one meanwhile.
const sentTTL = time.Hour

// inflightTTL bounds how long a seq counts as in flight unless its send
// renews it (see keep): a sender that died holding one stops holding
// readers back after this long.
const inflightTTL = 10 * time.Second

// next hands out the chat's next seq to sender's send that idem names,
// or 0 when an earlier attempt at the send took one (unless force); and
// the lower of the sender's mirrored positions (see positionsKey), -1
// when unknown. It fails with errStaleChat when version is not "" and no
// longer the chat's version. The caller must call done with a seq once
// the message is stored or abandoned.
func (a *seqAllocator) next(ctx context.Context, chatID bson.ObjectID, sender int, idem, version string, force bool) (seq, positions int64, err error) {
	f := 0
	if force {
		f = 1
	}
	keys := []string{a.key(chatID), a.inflightKey(chatID), a.sentKey(chatID, idem), a.positionsKey(chatID, sender), a.versionKey(chatID)}
	r, err := nextScript.Run(ctx, a.rdb, keys, time.Now().UnixMilli(), a.ttl().Milliseconds(), sentTTL.Milliseconds(), f, version).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("allocate seq: %w", err)
	}
	if len(r) != 2 {
		return 0, 0, fmt.Errorf("allocate seq: the script answered %v", r)
	}
	if r[0] < 0 {
		return 0, 0, errStaleChat
	}
	if r[0] > 0 {
		a.keep(chatID, r[0])
	}
	return r[0], r[1], nil
}

// queueDone queues, on p, what done does.
func (a *seqAllocator) queueDone(ctx context.Context, p redis.Pipeliner, chatID bson.ObjectID, seq int64) {
	a.release(chatID, seq)
	p.ZRem(ctx, a.inflightKey(chatID), seq)
}

// abandon stops keeping a seq in flight without marking it done: a send
// whose write failed may yet be stored (a write that timed out), so
// readers stay below it until it goes stale, inflightTTL from its last
// renewal.
func (a *seqAllocator) abandon(chatID bson.ObjectID, seq int64) {
	a.release(chatID, seq)
}

// done marks a seq as no longer in flight.
func (a *seqAllocator) done(ctx context.Context, chatID bson.ObjectID, seq int64) error {
	a.release(chatID, seq)
	if err := a.rdb.ZRem(context.WithoutCancel(ctx), a.inflightKey(chatID), seq).Err(); err != nil {
		return fmt.Errorf("release seq: %w", err)
	}
	return nil
}

// giveBackScript takes back the counter's last seq if it is ARGV[1] and
// no later one was handed out, and marks it no longer in flight.
var giveBackScript = redis.NewScript(`
if tonumber(redis.call('GET', KEYS[1]) or '-1') == tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`)

// giveBack returns a seq that no message took (a retry of a send that a
// racing attempt stored): when no later seq was handed out meanwhile, the
// next send takes it, and the chat's seqs stay without a gap.
func (a *seqAllocator) giveBack(ctx context.Context, chatID bson.ObjectID, seq int64) error {
	a.release(chatID, seq)
	err := giveBackScript.Run(context.WithoutCancel(ctx), a.rdb, []string{a.key(chatID), a.inflightKey(chatID)}, seq).Err()
	if err != nil {
		return fmt.Errorf("give back seq: %w", err)
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
// passed over for good. A message whose event went out is below it.
func (a *seqAllocator) stable(ctx context.Context, chatID bson.ObjectID) (int64, bool, error) {
	stale := time.Now().Add(-a.ttl()).UnixMilli()
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
	return s.maxSeqFrom(ctx, chatID, 0)
}

// maxSeqFrom returns the largest seq stored for the chat, knowing that
// one at least floor is stored (the chat's lastMessage), 0 for none:
// the query reads only the messages from floor up.
func (s *store) maxSeqFrom(ctx context.Context, chatID bson.ObjectID, floor int64) (int64, error) {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{{Key: "chatId", Value: chatID}, {Key: "seq", Value: bson.D{{Key: "$gte", Value: floor}}}},
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "seq", Value: 1}})).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return floor, nil
	}
	if err != nil {
		return 0, fmt.Errorf("max seq: %w", err)
	}
	return m.Seq, nil
}

// messageWithMedia returns the message that senderID sent to chatID
// under clientID if it has mediaID among its attachments (nil if not),
// found by its idemKey's index.
func (s *store) messageWithMedia(ctx context.Context, chatID bson.ObjectID, senderID int, clientID string, mediaID bson.ObjectID) (*messageDoc, error) {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{
		{Key: "idemKey", Value: idemKey(chatID, senderID, clientID)}, {Key: "attachments.mediaId", Value: mediaID},
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
	err := s.messages.FindOne(ctx, bson.D{{Key: "idemKey", Value: idemKey(chatID, senderID, clientID)}}).Decode(&m)
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
// already used gets the first message back, and takes no seq. A new
// message's seq is still in flight: the caller must release it
// (seqAllocator.done, or queueDone in the round trip that announces it),
// whatever happens next. A retry is known by the mark its first attempt
// left with the seq allocator, or, should Redis have lost it, by the
// unique idempotency key refusing the insert. With a new message it
// returns the lower of the sender's mirrored positions before it (see
// seqAllocator.positionsKey), -1 when unknown.
func (s *store) insertMessage(ctx context.Context, seqs *seqAllocator, m *messageDoc, floor int64, version string) (*messageDoc, bool, int64, error) {
	m.IdemKey = idemKey(m.ChatID, m.SenderID, m.ClientMessageID)
	m.Words = searchWords(m.Text)
	force := false
	for range 5 {
		seq, pos, err := seqs.next(ctx, m.ChatID, m.SenderID, m.IdemKey, version, force)
		if err != nil {
			return nil, false, 0, err
		}
		force = true
		if seq == 0 {
			// An earlier attempt at this send took a seq: it stored the
			// message, failed before, or is storing it now (then one of
			// the two inserts fails on the idempotency key, below).
			prev, err := s.messageByKey(ctx, m.ChatID, m.SenderID, m.ClientMessageID)
			if err != nil || prev != nil {
				return prev, false, -1, err
			}
			continue
		}
		stored, err := s.tryInsert(ctx, m, seq, floor)
		if err != nil {
			// The write may yet land: the seq stays in flight until
			// stale.
			seqs.abandon(m.ChatID, seq)
			return nil, false, 0, err
		}
		if stored {
			return m, true, pos, nil
		}
		// Either a racing attempt at this very send won, or the counter
		// fell behind the store.
		prev, err := s.messageByKey(ctx, m.ChatID, m.SenderID, m.ClientMessageID)
		if err != nil {
			_ = seqs.done(ctx, m.ChatID, seq)
			return nil, false, 0, err
		}
		if prev != nil {
			return prev, false, -1, seqs.giveBack(ctx, m.ChatID, seq)
		}
		if err := seqs.done(ctx, m.ChatID, seq); err != nil {
			return nil, false, 0, err
		}
		top, err := s.maxSeqFrom(ctx, m.ChatID, floor)
		if err != nil {
			return nil, false, 0, err
		}
		if err := seqs.raise(ctx, m.ChatID, max(top, floor)); err != nil {
			return nil, false, 0, err
		}
	}
	return nil, false, 0, errors.New("insert message: no free seq after 5 attempts")
}

// tryInsert stores m with seq. It reports false, with no error, when the
// seq cannot be used (it is not above floor, or the insert hit a
// duplicate key: the seq, or the idempotency key).
func (s *store) tryInsert(ctx context.Context, m *messageDoc, seq, floor int64) (bool, error) {
	if seq <= floor {
		// The counter went back (Redis lost recent writes) and this
		// number may fall in a gap below the chat's last message.
		return false, nil
	}
	m.ID, m.Seq, m.SeqKey, m.SentAt, m.Status = bson.NewObjectID(), seq, seqKey(m.ChatID, seq), s.nowMs(), statusSent
	err := s.inserts.do(ctx, m)
	switch {
	case err == nil:
		return true, nil
	case mongo.IsDuplicateKeyError(err):
		return false, nil
	default:
		return false, fmt.Errorf("insert message: %w", err)
	}
}

// insertMessages inserts the messages of concurrent sends in one
// unordered insert command, and returns each one's error (a duplicate
// key refuses its message alone).
func (s *store) insertMessages(ctx context.Context, ms []*messageDoc) []error {
	docs := make([]any, len(ms))
	for i, m := range ms {
		docs[i] = m
	}
	_, err := s.messages.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	return itemErrors(err, len(ms), func(i int) int { return i })
}

// raise makes a monotonic field of one document at least v, writing only
// where the field is smaller (or missing), with the fields of set and
// the $max of those of maxes. It reports whether it wrote. One
// conditional update: atomic on MongoDB and FerretDB 2; on FerretDB 1.x
// callers hold the document's lock (see store.locked).
func raise(ctx context.Context, c *mongo.Collection, id any, field string, v int64, set, maxes bson.D) (bool, error) {
	res, err := c.UpdateOne(ctx, raiseFilter(id, field, v), raiseUpdate(field, v, set, maxes))
	if err != nil {
		return false, fmt.Errorf("raise %s: %w", field, err)
	}
	return res.MatchedCount == 1, nil
}

// raiseFilter and raiseUpdate are raise's update.
func raiseFilter(id any, field string, v int64) bson.D {
	return bson.D{{Key: "_id", Value: id}, {Key: "$or", Value: bson.A{
		bson.D{{Key: field, Value: bson.D{{Key: "$lt", Value: v}}}},
		bson.D{{Key: field, Value: bson.D{{Key: "$exists", Value: false}}}},
	}}}
}

func raiseUpdate(field string, v int64, set, maxes bson.D) bson.D {
	update := bson.D{{Key: "$set", Value: append(bson.D{{Key: field, Value: v}}, set...)}}
	if len(maxes) > 0 {
		update = append(update, bson.E{Key: "$max", Value: maxes})
	}
	return update
}

// sent brings the chat up to m, just stored: the sender's positions
// (its sent seq, see chatDoc.SentSeq) and the chat's lastMessage and
// updatedAt. One update statement (see sentUpdate) where the engine makes
// it atomic; on FerretDB 1.x the positions and lastMessage as
// raiseOwnPositions and setLastMessage write them.
func (s *store) sent(ctx context.Context, m *messageDoc) error {
	if s.locks.Serial() {
		if err := s.raiseOwnPositions(ctx, m.ChatID, m.SenderID, m.Seq); err != nil {
			return err
		}
		return s.setLastMessage(ctx, m)
	}
	if err := s.sentUpdates.do(ctx, m); err != nil {
		return fmt.Errorf("chat after send: %w", err)
	}
	return nil
}

// sentMany makes sent's update for the messages of concurrent sends, in
// one unordered update command of one statement per chat, and returns
// each one's error (that of its chat's statement).
func (s *store) sentMany(ctx context.Context, ms []*messageDoc) []error {
	at := map[bson.ObjectID]int{} // a chat's index in models
	var models []mongo.WriteModel
	var byChat [][]*messageDoc
	for _, m := range ms {
		i, ok := at[m.ChatID]
		if !ok {
			i = len(byChat)
			at[m.ChatID] = i
			byChat = append(byChat, nil)
		}
		byChat[i] = append(byChat[i], m)
	}
	for _, chatMs := range byChat {
		models = append(models, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: chatMs[0].ChatID}}).SetUpdate(sentUpdate(chatMs)))
	}
	_, err := s.chats.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
	chatErrs := itemErrors(err, len(models), func(i int) int { return i })
	if chatErrs == nil {
		return nil
	}
	errs := make([]error, len(ms))
	for i, m := range ms {
		errs[i] = chatErrs[at[m.ChatID]]
	}
	return errs
}

// sentUpdate is the update of one chat after the sends of ms, all to it:
// each sender's sentSeq and the chat's updatedAt up to the largest of
// theirs, lastMessage to the message with the largest seq unless the chat
// has a later one. An update pipeline, so that the chat's document is
// written once however many fields move: a document version in a group's
// chat means an index entry per member (participants.user_id), which
// made a second statement cost as much as the first.
func sentUpdate(ms []*messageDoc) mongo.Pipeline {
	last := ms[0]
	bySender := map[int]int64{}
	var senders []int
	updated := last.SentAt
	for _, m := range ms {
		if m.Seq > last.Seq {
			last = m
		}
		if _, ok := bySender[m.SenderID]; !ok {
			senders = append(senders, m.SenderID)
		}
		bySender[m.SenderID] = max(bySender[m.SenderID], m.Seq)
		if m.SentAt.After(updated) {
			updated = m.SentAt
		}
	}
	set := bson.D{}
	for _, u := range senders {
		field := "sentSeq." + strconv.Itoa(u)
		set = append(set, bson.E{Key: field, Value: bson.D{{Key: "$max", Value: bson.A{"$" + field, bySender[u]}}}})
	}
	// $literal: a preview is the sender's text, which may start with a $.
	lm := lastMessageDoc{MessageID: last.ID, SenderID: last.SenderID, Preview: previewOf(last), Seq: last.Seq, SentAt: last.SentAt}
	set = append(set,
		bson.E{Key: "updatedAt", Value: bson.D{{Key: "$max", Value: bson.A{"$updatedAt", updated}}}},
		bson.E{Key: "lastMessage", Value: bson.D{{Key: "$cond", Value: bson.D{
			{Key: "if", Value: bson.D{{Key: "$lt", Value: bson.A{bson.D{{Key: "$ifNull", Value: bson.A{"$lastMessage.seq", 0}}}, last.Seq}}}},
			{Key: "then", Value: bson.D{{Key: "$literal", Value: lm}}},
			{Key: "else", Value: "$lastMessage"},
		}}}})
	return mongo.Pipeline{{{Key: "$set", Value: set}}}
}

// setLastMessage moves the chat's lastMessage forward to m: one
// conditional update where the engine makes it atomic. On FerretDB 1.x
// (see lastOffers) sends to one chat combine their updates under the
// chat's lock.
func (s *store) setLastMessage(ctx context.Context, m *messageDoc) error {
	if s.locks.Serial() {
		return s.offerLastMessage(ctx, m)
	}
	_, err := s.applyLast(ctx, m.ChatID, lastOffer{Seq: m.Seq, ID: m.ID, SenderID: m.SenderID, Preview: previewOf(m), SentAt: m.SentAt})
	return err
}

// applyLast writes o as the chat's lastMessage unless a later one is
// there, and moves updatedAt up to its time.
func (s *store) applyLast(ctx context.Context, chatID bson.ObjectID, o lastOffer) (bool, error) {
	return raise(ctx, s.chats, chatID, "lastMessage.seq", o.Seq, lastSet(o), bson.D{{Key: "updatedAt", Value: o.SentAt}})
}

// lastSet sets lastMessage's fields but its seq to o's.
func lastSet(o lastOffer) bson.D {
	return bson.D{
		{Key: "lastMessage.message_id", Value: o.ID},
		{Key: "lastMessage.sender_id", Value: o.SenderID},
		{Key: "lastMessage.preview", Value: o.Preview},
		{Key: "lastMessage.sentAt", Value: o.SentAt},
	}
}

// raisePosition moves a member's read or delivered position forward,
// creating it the first time.
func (s *store) raisePosition(ctx context.Context, chatID bson.ObjectID, userID int, kind string, seq int64) error {
	id := positionID(chatID, userID, kind)
	return s.locked(ctx, "position:"+id, func() error {
		for range 2 {
			wrote, err := raise(ctx, s.positions, id, "seq", seq, nil, nil)
			if err != nil || wrote {
				return err
			}
			// Nothing written: the position is at least seq already, or
			// missing.
			n, err := s.positions.CountDocuments(ctx, bson.D{{Key: "_id", Value: id}})
			if err != nil {
				return fmt.Errorf("raise position: %w", err)
			}
			if n == 1 {
				return nil
			}
			_, err = s.positions.InsertOne(ctx, positionDoc{ID: id, ChatID: chatID, UserID: userID, Kind: kind, Seq: seq})
			if err == nil || !mongo.IsDuplicateKeyError(err) {
				return err
			}
			// Created meanwhile by another request: raise that one.
		}
		return nil
	})
}

// raiseOwnPositions moves the sender's delivered and read positions up to
// the seq it just sent: one update of both where the engine makes it
// atomic.
func (s *store) raiseOwnPositions(ctx context.Context, chatID bson.ObjectID, userID int, seq int64) error {
	if !s.locks.Serial() {
		// Two updates by _id in one command: an updateMany by "_id $in"
		// reads the whole collection on DocumentDB.
		var models []mongo.WriteModel
		for _, kind := range []string{kindDelivered, kindRead} {
			models = append(models, mongo.NewUpdateOneModel().
				SetFilter(bson.D{{Key: "_id", Value: positionID(chatID, userID, kind)}, {Key: "seq", Value: bson.D{{Key: "$lt", Value: seq}}}}).
				SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "seq", Value: seq}}}}))
		}
		res, err := s.positions.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
		if err != nil {
			return fmt.Errorf("raise positions: %w", err)
		}
		if res.MatchedCount == 2 {
			return nil
		}
	}
	for _, kind := range []string{kindDelivered, kindRead} {
		if err := s.raisePosition(ctx, chatID, userID, kind, seq); err != nil {
			return err
		}
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

// quoted returns, by id, the messages of the chat that replies among ms
// answer, in one find of the fields a quote shows.
func (s *store) quoted(ctx context.Context, chatID bson.ObjectID, ms []messageDoc) (map[bson.ObjectID]*messageDoc, error) {
	var ids bson.A
	for i := range ms {
		if r := ms[i].ReplyTo; r != nil && !slices.Contains(ids, any(r.MessageID)) {
			ids = append(ids, r.MessageID)
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	cur, err := s.messages.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}, {Key: "chatId", Value: chatID}},
		options.Find().SetProjection(bson.D{
			{Key: "chatId", Value: 1}, {Key: "seq", Value: 1}, {Key: "senderId", Value: 1}, {Key: "text", Value: 1},
			{Key: "attachments", Value: 1}, {Key: "deletedAt", Value: 1},
		}))
	if err != nil {
		return nil, fmt.Errorf("quoted messages: %w", err)
	}
	var found []messageDoc
	if err := cur.All(ctx, &found); err != nil {
		return nil, fmt.Errorf("quoted messages: %w", err)
	}
	out := make(map[bson.ObjectID]*messageDoc, len(found))
	for i := range found {
		out[found[i].ID] = &found[i]
	}
	return out, nil
}

// A page of messages is read through a window of seqs just wider than the
// page. Seqs are dense (a gap is left only by a send that failed after
// taking its seq), so one window almost always holds the page; where it
// does not, the window widens. Bounding the query so keeps the cost of a
// page independent of the size of the chat on engines whose indexes do
// not serve the sort: DocumentDB reads every message that matches the
// filter, then sorts.
const pageSlack = 16

// pageQuery is the filter and options of one window of a page of
// messages: after or before a seq (or the newest), never above upTo when
// set; top is the chat's last seq as last read, which guides the window
// when upTo is not known. span is the window's width; complete reports
// that the window reaches as far as the page could.
func pageQuery(chatID bson.ObjectID, before, after, upTo *int64, top, span int64, limit int) (filter bson.D, opts *options.FindOptionsBuilder, order int, complete bool) {
	var seq bson.D
	if after != nil {
		order = 1
		seq = bson.D{{Key: "$gt", Value: *after}}
		hi := *after + span
		switch {
		case upTo != nil && hi >= *upTo:
			hi, complete = *upTo, true
		case upTo == nil && hi >= top:
			complete = true // and no upper bound: beyond top lie few
		}
		if upTo != nil || !complete {
			seq = append(seq, bson.E{Key: "$lte", Value: hi})
		}
	} else {
		order = -1
		hi := top
		bounded := false
		if before != nil {
			hi, bounded = *before-1, true
		}
		if upTo != nil {
			hi, bounded = min(hi, *upTo), true
			if before == nil {
				hi = *upTo
			}
		}
		if bounded {
			seq = append(seq, bson.E{Key: "$lte", Value: hi})
		}
		if lo := hi - span; lo > 0 {
			seq = append(seq, bson.E{Key: "$gt", Value: lo})
		} else {
			complete = true
		}
	}
	filter = bson.D{{Key: "chatId", Value: chatID}}
	if len(seq) > 0 {
		filter = append(filter, bson.E{Key: "seq", Value: seq})
	}
	return filter, options.Find().SetSort(bson.D{{Key: "seq", Value: order}}).SetLimit(int64(limit + 1)), order, complete
}

// listMessages returns up to limit messages after or before a seq (or the
// newest), in ascending seq order, and whether more lie beyond. With upTo
// set, messages above it are left out. top is the chat's last seq as last
// read (see pageQuery).
func (s *store) listMessages(ctx context.Context, chatID bson.ObjectID, before, after, upTo *int64, top int64, limit int) ([]messageDoc, bool, error) {
	var out []messageDoc
	for span := int64(limit + 1 + pageSlack); ; span *= 4 {
		filter, opts, order, complete := pageQuery(chatID, before, after, upTo, top, span, limit)
		cur, err := s.messages.Find(ctx, filter, opts)
		if err != nil {
			return nil, false, fmt.Errorf("list messages: %w", err)
		}
		out = out[:0]
		if err := cur.All(ctx, &out); err != nil {
			return nil, false, fmt.Errorf("list messages: %w", err)
		}
		if len(out) > limit || complete {
			if order < 0 {
				slices.Reverse(out)
				if len(out) > limit {
					out = out[1:]
					return out, true, nil
				}
			}
			more := len(out) > limit
			if more {
				out = out[:limit]
			}
			return out, more, nil
		}
	}
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
		bson.D{{Key: "$set", Value: bson.D{{Key: "text", Value: text}, {Key: "words", Value: searchWords(text)}, {Key: "editedAt", Value: now}}}})
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
			// A tombstone shows nothing of the message: no text, files,
			// mentions or quote.
			{Key: "$unset", Value: bson.D{
				{Key: "text", Value: ""}, {Key: "words", Value: ""}, {Key: "attachments", Value: ""}, {Key: "mentions", Value: ""}, {Key: "replyTo", Value: ""},
			}},
		})
		return err
	}); err != nil {
		return fmt.Errorf("delete message: %w", err)
	}
	m.Text, m.Attachments, m.Mentions, m.ReplyTo, m.DeletedAt = "", nil, nil, nil, &now
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
