package chat

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/doclock"
)

// SeedSpec says what Seed writes: either Chats new chats of Messages
// messages each, between the users of UserIDs, or, with ChatID set,
// Messages more messages in that existing chat.
type SeedSpec struct {
	// UserIDs are the members of the new chats. They must name existing
	// users (Seed does not look at PostgreSQL; register them through the
	// API first). Ignored with ChatID.
	UserIDs []int
	// Chats is how many chats to create: private chats between distinct
	// pairs of UserIDs when GroupSize is 0 or 2, groups of GroupSize
	// members otherwise.
	Chats     int
	GroupSize int
	// Messages is how many messages each chat gets. Their senders take
	// turns over the chat's members.
	Messages int
	// ChatID is the id of an existing chat to fill instead, sent to by its
	// current members.
	ChatID string
	// TextBytes is the length of each message's text; 0 means 200.
	TextBytes int
	// Read puts every member's read and delivered positions at the chat's
	// last message. Otherwise they are where sending leaves them: at the
	// last message each member sent.
	Read bool
}

// SeededChat is a chat Seed wrote messages to.
type SeededChat struct {
	ID      string
	Members []int
	// FirstSeq and LastSeq are the seqs of the first and last message
	// Seed wrote. The next message sent through the API gets LastSeq+1
	// (or above, if others were sent meanwhile).
	FirstSeq, LastSeq int64
}

// SeedResult is what Seed wrote.
type SeedResult struct {
	Chats    []SeededChat
	Messages int
}

// seedBatch is how many documents one InsertMany carries, and
// seedWorkers how many run at once.
const (
	seedBatch   = 1000
	seedWorkers = 4
)

// Seed writes chats and messages straight into the store, as if they had
// been sent through the API, for load tests and benchmarks that need a big
// store: 100,000 messages take many minutes to send through the API, and
// well under a minute this way. Messages go in with unordered InsertMany
// calls of about 1,000 documents; each chat gets its lastMessage, updatedAt and its members'
// positions, and its seq counter in Redis (under redisPrefix, the
// server's -redis-prefix) is left at the last seq, so that sends through
// the API continue at the next one. No events are published.
//
// New chats become visible whole: their documents are inserted after
// their messages. Filling an existing chat (spec.ChatID) is safe while
// clients use it: Seed reserves its block of seqs from the same counter
// the server uses and holds readers below the block until it is written,
// as an in-flight send does. The database must have been prepared by the
// server (see Prepare); private chats whose pair already has one are
// skipped in favour of further pairs.
func Seed(ctx context.Context, db *mongo.Database, rdb redis.UniversalClient, redisPrefix string, spec SeedSpec) (SeedResult, error) {
	if spec.Messages < 0 || spec.Chats < 0 {
		return SeedResult{}, errors.New("seed: negative count")
	}
	if spec.TextBytes <= 0 {
		spec.TextBytes = 200
	}
	// The same locks as the server's (see app.Open).
	locks, err := doclock.For(ctx, db, rdb, redisPrefix+"lock:")
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	sd := &seeder{
		store: newStore(db, rdb, locks, redisPrefix, time.Now),
		seqs:  &seqAllocator{rdb: rdb, prefix: redisPrefix},
		spec:  spec,
	}
	if spec.ChatID != "" {
		return sd.fillChat(ctx)
	}
	return sd.newChats(ctx)
}

type seeder struct {
	store *store
	seqs  *seqAllocator
	spec  SeedSpec
}

// seedChat is a chat being seeded: its document and its block of seqs.
type seedChat struct {
	doc      *chatDoc
	first    int64
	from, to time.Time // sentAt of the first and the last message
	last     *messageDoc
}

// message returns the chat's i-th seeded message (0-based).
func (sd *seeder) message(c *seedChat, i int) messageDoc {
	n := sd.spec.Messages
	seq := c.first + int64(i)
	sentAt := c.from
	if n > 1 {
		span := float64(c.to.Sub(c.from))
		sentAt = c.from.Add(time.Duration(span * float64(i) / float64(n-1))).Truncate(time.Millisecond)
	}
	m := messageDoc{
		ID:              bson.NewObjectID(),
		ChatID:          c.doc.ID,
		SenderID:        c.doc.Participants[i%len(c.doc.Participants)].UserID,
		Text:            seedText(seq, sd.spec.TextBytes),
		SentAt:          sentAt,
		Status:          statusSent,
		Seq:             seq,
		ClientMessageID: "seed-" + strconv.FormatInt(seq, 10),
		SeqKey:          seqKey(c.doc.ID, seq),
	}
	m.IdemKey = idemKey(m.ChatID, m.SenderID, m.ClientMessageID)
	m.Words = searchWords(m.Text)
	return m
}

// lastSent returns, for each member, the seq of the last message the
// member sent in the chat (none: absent).
func (sd *seeder) lastSent(c *seedChat) map[int]int64 {
	out := map[int]int64{}
	parts := c.doc.Participants
	n := sd.spec.Messages
	for j := range parts {
		if j >= n {
			break
		}
		// The largest i < n with i % len(parts) == j.
		i := j + (n-1-j)/len(parts)*len(parts)
		out[parts[j].UserID] = c.first + int64(i)
	}
	return out
}

const seedFiller = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "

func seedText(seq int64, n int) string {
	var b strings.Builder
	b.WriteString("seed message ")
	b.WriteString(strconv.FormatInt(seq, 10))
	b.WriteString(": ")
	for b.Len() < n {
		b.WriteString(seedFiller)
	}
	return b.String()[:n]
}

// insertMessages writes every seeded message of chats in batches, a few
// batches at a time. before, when set, runs before each batch.
func (sd *seeder) insertMessages(ctx context.Context, chats []*seedChat, before func(context.Context) error) error {
	total := len(chats) * sd.spec.Messages
	batches := make(chan int)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	for range seedWorkers {
		wg.Go(func() {
			docs := make([]any, 0, seedBatch)
			for start := range batches {
				docs = docs[:0]
				for g := start; g < min(start+seedBatch, total); g++ {
					c, i := chats[g/sd.spec.Messages], g%sd.spec.Messages
					m := sd.message(c, i)
					if i == sd.spec.Messages-1 {
						c.last = &m
					}
					docs = append(docs, m)
				}
				if before != nil {
					if err := before(ctx); err != nil {
						fail(err)
						continue
					}
				}
				if _, err := sd.store.messages.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false)); err != nil {
					fail(fmt.Errorf("seed messages: %w", err))
				}
			}
		})
	}
	for start := 0; start < total; start += seedBatch {
		select {
		case batches <- start:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(batches)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// insertMany inserts docs in unordered batches.
func insertMany[T any](ctx context.Context, c *mongo.Collection, docs []T) error {
	for start := 0; start < len(docs); start += seedBatch {
		batch := make([]any, 0, seedBatch)
		for _, d := range docs[start:min(start+seedBatch, len(docs))] {
			batch = append(batch, d)
		}
		if _, err := c.InsertMany(ctx, batch, options.InsertMany().SetOrdered(false)); err != nil {
			return err
		}
	}
	return nil
}

// newChats creates the chats, their messages and positions.
func (sd *seeder) newChats(ctx context.Context) (SeedResult, error) {
	docs, err := sd.planChats(ctx)
	if err != nil {
		return SeedResult{}, err
	}
	n := sd.spec.Messages
	total := len(docs) * n
	// A millisecond apart, the last one now.
	now := time.Now().UTC().Truncate(time.Millisecond)
	base := now.Add(-time.Duration(total) * time.Millisecond)

	// Each chat's block of seqs (1..n for a new chat; INCRBY keeps any
	// that Redis somehow holds).
	pipe := sd.seqs.rdb.Pipeline()
	incrs := make([]*redis.IntCmd, len(docs))
	for i, d := range docs {
		incrs[i] = pipe.IncrBy(ctx, sd.seqs.key(d.ID), int64(n))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return SeedResult{}, fmt.Errorf("seed: reserve seqs: %w", err)
	}
	chats := make([]*seedChat, len(docs))
	for i, d := range docs {
		from := base.Add(time.Duration(i*n) * time.Millisecond)
		chats[i] = &seedChat{doc: d, first: incrs[i].Val() - int64(n) + 1, from: from, to: from.Add(time.Duration(max(n-1, 0)) * time.Millisecond)}
		d.CreatedAt = from.Add(-time.Millisecond)
		d.UpdatedAt = d.CreatedAt
	}

	if err := sd.insertMessages(ctx, chats, nil); err != nil {
		return SeedResult{}, err
	}

	var positions []positionDoc
	for _, c := range chats {
		if c.last == nil {
			break // no messages
		}
		c.doc.LastMessage = &lastMessageDoc{
			MessageID: c.last.ID, SenderID: c.last.SenderID, Preview: previewOf(c.last), Seq: c.last.Seq, SentAt: c.last.SentAt,
		}
		c.doc.UpdatedAt = c.last.SentAt
		sent := sd.lastSent(c)
		for _, p := range c.doc.Participants {
			seq, ok := sent[p.UserID]
			if sd.spec.Read {
				seq, ok = c.last.Seq, true
			}
			if !ok {
				continue
			}
			for _, kind := range []string{kindRead, kindDelivered} {
				positions = append(positions, positionDoc{
					ID: positionID(c.doc.ID, p.UserID, kind), ChatID: c.doc.ID, UserID: p.UserID, Kind: kind, Seq: seq,
				})
			}
		}
	}
	if err := insertMany(ctx, sd.store.positions, positions); err != nil {
		return SeedResult{}, fmt.Errorf("seed positions: %w", err)
	}
	if err := insertMany(ctx, sd.store.chats, docs); err != nil {
		return SeedResult{}, errors.Join(fmt.Errorf("seed chats: %w", err), sd.dropOrphans(ctx, docs))
	}
	res := SeedResult{Messages: total}
	for _, c := range chats {
		members := make([]int, len(c.doc.Participants))
		for i, p := range c.doc.Participants {
			members[i] = p.UserID
		}
		res.Chats = append(res.Chats, SeededChat{ID: c.doc.ID.Hex(), Members: members, FirstSeq: c.first, LastSeq: c.first + int64(n) - 1})
	}
	return res, nil
}

// planChats returns the documents of the chats to create, without their
// messages.
func (sd *seeder) planChats(ctx context.Context) ([]*chatDoc, error) {
	if sd.spec.Chats == 0 {
		return nil, nil
	}
	var users []int
	seen := map[int]bool{}
	for _, u := range sd.spec.UserIDs {
		if !seen[u] {
			seen[u] = true
			users = append(users, u)
		}
	}
	size := sd.spec.GroupSize
	if size == 0 {
		size = 2
	}
	switch {
	case size < 2 || size > MaxGroupSize:
		return nil, fmt.Errorf("seed: a chat has 2 to %d members, not %d", MaxGroupSize, size)
	case size > len(users):
		return nil, fmt.Errorf("seed: chats of %d members need as many users, got %d", size, len(users))
	case size > 2:
		docs := make([]*chatDoc, sd.spec.Chats)
		for k := range docs {
			id := bson.NewObjectID()
			parts := make([]participantDoc, size)
			for j := range parts {
				parts[j] = participantDoc{UserID: users[(k*size+j)%len(users)], Role: roleMember}
			}
			parts[0].Role = roleAdmin
			docs[k] = &chatDoc{
				ID: id, Name: "seed " + strconv.Itoa(k+1), Type: typeGroup, Participants: parts,
				MembersVersion: 1, PairKey: "g:" + id.Hex(),
			}
		}
		return docs, nil
	}

	// Private chats: pairs of neighbours first, then ever further apart,
	// so that the chats spread evenly over the users; pairs that have a
	// chat already are passed over.
	var docs []*chatDoc
	var candidates []*chatDoc
	flush := func() error {
		keys := make(bson.A, len(candidates))
		for i, c := range candidates {
			keys[i] = c.PairKey
		}
		vals, err := distinctIn(ctx, sd.store.chats, "pairKey", keys)
		if err != nil {
			return fmt.Errorf("seed: existing chats: %w", err)
		}
		exists := map[string]bool{}
		for _, v := range vals {
			exists[v.StringValue()] = true
		}
		for _, c := range candidates {
			if !exists[c.PairKey] && len(docs) < sd.spec.Chats {
				docs = append(docs, c)
			}
		}
		candidates = candidates[:0]
		return nil
	}
	for d := 1; d < len(users) && len(docs) < sd.spec.Chats; d++ {
		for i := 0; i+d < len(users); i++ {
			a, b := users[i], users[i+d]
			candidates = append(candidates, &chatDoc{
				ID: bson.NewObjectID(), Type: typePrivate,
				Participants: []participantDoc{
					{UserID: min(a, b), Role: roleMember}, {UserID: max(a, b), Role: roleMember},
				},
				MembersVersion: 1, PairKey: privateKey(a, b),
			})
			if len(candidates) == seedBatch {
				if err := flush(); err != nil {
					return nil, err
				}
				if len(docs) == sd.spec.Chats {
					break
				}
			}
		}
	}
	if len(candidates) > 0 {
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if len(docs) < sd.spec.Chats {
		return nil, fmt.Errorf("seed: %d users have %d pairs without a private chat, not the %d asked for",
			len(users), len(docs), sd.spec.Chats)
	}
	return docs, nil
}

// distinctIn returns those of values that a document of c holds in field.
func distinctIn(ctx context.Context, c *mongo.Collection, field string, values bson.A) ([]bson.RawValue, error) {
	raw, err := c.Distinct(ctx, field, bson.D{{Key: field, Value: bson.D{{Key: "$in", Value: values}}}}).Raw()
	if err != nil {
		return nil, err
	}
	return raw.Values()
}

// dropOrphans deletes what was written for those of docs that did not
// make it into the chats collection.
func (sd *seeder) dropOrphans(ctx context.Context, docs []*chatDoc) error {
	ids := make(bson.A, len(docs))
	for i, d := range docs {
		ids[i] = d.ID
	}
	vals, err := distinctIn(ctx, sd.store.chats, "_id", ids)
	if err != nil {
		return fmt.Errorf("seed: clean up: %w", err)
	}
	stored := map[bson.ObjectID]bool{}
	for _, v := range vals {
		stored[v.ObjectID()] = true
	}
	var orphans bson.A
	var keys []string
	for _, d := range docs {
		if !stored[d.ID] {
			orphans = append(orphans, d.ID)
			keys = append(keys, sd.seqs.key(d.ID))
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	filter := bson.D{{Key: "chatId", Value: bson.D{{Key: "$in", Value: orphans}}}}
	_, err1 := sd.store.messages.DeleteMany(ctx, filter)
	_, err2 := sd.store.positions.DeleteMany(ctx, filter)
	// One DEL each: the chats' counters are in different cluster slots.
	_, err3 := sd.seqs.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, k)
		}
		return nil
	})
	if err := errors.Join(err1, err2, err3); err != nil {
		return fmt.Errorf("seed: clean up: %w", err)
	}
	return nil
}

// reserveScript takes a block of ARGV[1] seqs from a chat's counter and
// records its first seq as in flight (see seqAllocator.next), returning
// the block's last seq.
var reserveScript = redis.NewScript(`
local hi = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], hi - tonumber(ARGV[1]) + 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return hi
`)

// fillChat adds the messages to an existing chat.
func (sd *seeder) fillChat(ctx context.Context) (SeedResult, error) {
	id, err := bson.ObjectIDFromHex(sd.spec.ChatID)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: chat id: %w", err)
	}
	c, err := sd.store.getChat(ctx, id)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	if len(c.Participants) == 0 {
		return SeedResult{}, errors.New("seed: the chat has no members to send")
	}
	members := make([]int, len(c.Participants))
	for i, p := range c.Participants {
		members[i] = p.UserID
	}
	n := sd.spec.Messages
	if n == 0 {
		return SeedResult{Chats: []SeededChat{{ID: id.Hex(), Members: members}}}, nil
	}

	// The counter may have fallen behind the store (see seqAllocator);
	// then the block starts above what is stored.
	top, err := sd.store.maxSeq(ctx, id)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	if err := sd.seqs.raise(ctx, id, max(top, lastSeq(c))); err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	keys := []string{sd.seqs.key(id), sd.seqs.inflightKey(id)}
	hi, err := reserveScript.Run(ctx, sd.seqs.rdb, keys, n, time.Now().UnixMilli(), inflightTTL.Milliseconds()).Int64()
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: reserve seqs: %w", err)
	}
	first := hi - int64(n) + 1
	// However it ends, readers stop waiting for the block.
	defer sd.seqs.done(ctx, id, first)

	now := time.Now().UTC().Truncate(time.Millisecond)
	from := now.Add(-time.Duration(n) * time.Millisecond)
	if c.LastMessage != nil && c.LastMessage.SentAt.After(from) {
		from = c.LastMessage.SentAt
		if from.After(now) {
			from = now
		}
	}
	sc := &seedChat{doc: c, first: first, from: from, to: now}
	// Keep the block in flight while it is written (in-flight seqs go
	// stale after inflightTTL).
	stillInFlight := func(ctx context.Context) error {
		pipe := sd.seqs.rdb.Pipeline()
		pipe.ZAdd(ctx, keys[1], redis.Z{Score: float64(time.Now().UnixMilli()), Member: first})
		pipe.PExpire(ctx, keys[1], inflightTTL)
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("seed: in-flight seqs: %w", err)
		}
		return nil
	}
	if err := sd.insertMessages(ctx, []*seedChat{sc}, stillInFlight); err != nil {
		return SeedResult{}, err
	}
	if err := sd.store.setLastMessage(ctx, sc.last); err != nil {
		return SeedResult{}, fmt.Errorf("seed: %w", err)
	}
	for uid, seq := range sd.lastSent(sc) {
		if err := sd.store.raiseOwnPositions(ctx, id, uid, seq); err != nil {
			return SeedResult{}, fmt.Errorf("seed: %w", err)
		}
	}
	if sd.spec.Read {
		for _, uid := range members {
			if err := sd.store.raiseOwnPositions(ctx, id, uid, hi); err != nil {
				return SeedResult{}, fmt.Errorf("seed: %w", err)
			}
		}
	}
	return SeedResult{Chats: []SeededChat{{ID: id.Hex(), Members: members, FirstSeq: first, LastSeq: hi}}, Messages: n}, nil
}
