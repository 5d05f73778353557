package chat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// MaxReactionEmoji is the most distinct emoji the reactions to one
// message may use.
const MaxReactionEmoji = 20

var (
	errMessageDeleted = errors.New("the message was deleted")
	errTooManyEmoji   = fmt.Errorf("a message takes at most %d different emoji", MaxReactionEmoji)
)

// reactionDoc is a document of the reactions collection: one member's
// reaction with one emoji to one message. Its _id names all three, so a
// member reacts with an emoji once however often it asks.
//
// Counts are never stored: they are counted from these documents when
// read, as no transaction could keep a counter in step with them. The
// message's emojis (see messageDoc.Emojis) hold which emoji are in use,
// for the limit and so that messages without reactions cost no query.
type reactionDoc struct {
	ID        string        `bson:"_id"`
	ChatID    bson.ObjectID `bson:"chatId"`
	MessageID bson.ObjectID `bson:"messageId"`
	UserID    int           `bson:"userId"`
	Emoji     string        `bson:"emoji"`
	At        time.Time     `bson:"at"`
}

func reactionID(messageID bson.ObjectID, userID int, emoji string) string {
	return messageID.Hex() + ":" + strconv.Itoa(userID) + ":" + emoji
}

// messageLock names the lock of a message's document (see store.locked),
// the one its edit and delete hold.
func messageLock(id bson.ObjectID) string { return "message:" + id.Hex() }

// notDeleted matches a message that is not deleted.
var notDeleted = bson.E{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}}

// emojiRoom matches the message when it is not deleted and has emoji
// among its emojis, or room for it.
func emojiRoom(messageID bson.ObjectID, emoji string) bson.D {
	return bson.D{
		{Key: "_id", Value: messageID},
		notDeleted,
		{Key: "$or", Value: bson.A{
			bson.D{{Key: "emojis", Value: emoji}},
			bson.D{{Key: "emojis." + strconv.Itoa(MaxReactionEmoji-1), Value: bson.D{{Key: "$exists", Value: false}}}},
		}},
	}
}

// useEmoji records emoji among the message's emojis, unless the message
// is deleted (errMessageDeleted) or uses MaxReactionEmoji others already
// (errTooManyEmoji): one conditional update, so that racing reactions
// never take the message past the limit.
func (s *store) useEmoji(ctx context.Context, chatID, messageID bson.ObjectID, emoji string) error {
	var res *mongo.UpdateResult
	err := s.locked(ctx, messageLock(messageID), func() (err error) {
		res, err = s.messages.UpdateOne(ctx, append(emojiRoom(messageID, emoji), bson.E{Key: "chatId", Value: chatID}),
			bson.D{{Key: "$addToSet", Value: bson.D{{Key: "emojis", Value: emoji}}}})
		return err
	})
	if err != nil {
		return fmt.Errorf("use emoji: %w", err)
	}
	if res.MatchedCount == 1 {
		return nil
	}
	m, err := s.getMessage(ctx, chatID, messageID)
	if err != nil {
		return err
	}
	if m.DeletedAt != nil {
		return errMessageDeleted
	}
	return errTooManyEmoji
}

// restoreEmoji puts emoji back among the emojis of the message, unless it
// is deleted, within the limit, and reports whether the emoji is there:
// a reaction uses it, which a removal racing with its add took for the
// last one (see dropEmoji), or which freeEmojis freed while the add was
// between recording its emoji and storing its reaction. When the emoji's
// place was taken meanwhile, the add takes its reaction back (see
// Service.reactionAdded), so that a message never has more than
// MaxReactionEmoji emoji.
func (s *store) restoreEmoji(ctx context.Context, messageID bson.ObjectID, emoji string) (bool, error) {
	var res *mongo.UpdateResult
	err := s.locked(ctx, messageLock(messageID), func() (err error) {
		res, err = s.messages.UpdateOne(ctx, emojiRoom(messageID, emoji),
			bson.D{{Key: "$addToSet", Value: bson.D{{Key: "emojis", Value: emoji}}}})
		return err
	})
	if err != nil {
		return false, fmt.Errorf("restore emoji: %w", err)
	}
	return res.MatchedCount == 1, nil
}

// dropEmoji takes emoji out of the message's emojis if no reaction uses
// it. An add of the emoji that raced in (its update found the emoji still
// there) is seen either here, by the second look after the pull, or by
// the add itself, which reads the emojis after storing its reaction (see
// Service.AddReaction); either puts the emoji back. The pull is made only
// if the reactions' version is still the one read before the first look:
// an add that stored its reaction and read the emojis (bumpReactions)
// after that look, but before the pull, has answered that its emoji is
// there, and must not lose it to the pull (nor its place to another
// emoji before the emoji could be put back).
func (s *store) dropEmoji(ctx context.Context, messageID bson.ObjectID, emoji string) error {
	var m messageDoc
	err := s.messages.FindOne(ctx, bson.D{{Key: "_id", Value: messageID}},
		options.FindOne().SetProjection(bson.D{{Key: "reactVer", Value: 1}})).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("drop emoji: %w", err)
	}
	if used, err := s.emojiUsed(ctx, messageID, emoji); err != nil || used {
		return err
	}
	version := bson.E{Key: "reactVer", Value: m.ReactVer}
	if m.ReactVer == 0 {
		version.Value = bson.D{{Key: "$exists", Value: false}}
	}
	err = s.locked(ctx, messageLock(messageID), func() error {
		_, err := s.messages.UpdateOne(ctx, bson.D{{Key: "_id", Value: messageID}, version},
			bson.D{{Key: "$pull", Value: bson.D{{Key: "emojis", Value: emoji}}}})
		return err
	})
	if err != nil {
		return fmt.Errorf("drop emoji: %w", err)
	}
	if used, err := s.emojiUsed(ctx, messageID, emoji); err != nil || !used {
		return err
	}
	// When it cannot go back, the add whose reaction uses it takes the
	// reaction back.
	_, err = s.restoreEmoji(ctx, messageID, emoji)
	return err
}

// freeEmojis drops (see dropEmoji) those of the message's emojis that no
// reaction uses, and reports whether it found any.
func (s *store) freeEmojis(ctx context.Context, chatID, messageID bson.ObjectID) (bool, error) {
	m, err := s.getMessage(ctx, chatID, messageID)
	if err != nil {
		return false, err
	}
	counts, err := s.reactionCounts(ctx, []bson.ObjectID{messageID}, forEvent)
	if err != nil {
		return false, err
	}
	freed := false
	for _, e := range m.Emojis {
		if slices.ContainsFunc(counts[messageID], func(c reactionCount) bool { return c.Emoji == e }) {
			continue
		}
		if err := s.dropEmoji(ctx, messageID, e); err != nil {
			return false, err
		}
		freed = true
	}
	return freed, nil
}

// emojiUsed reports whether a reaction to the message uses emoji.
func (s *store) emojiUsed(ctx context.Context, messageID bson.ObjectID, emoji string) (bool, error) {
	err := s.reactions.FindOne(ctx, bson.D{{Key: "messageId", Value: messageID}, {Key: "emoji", Value: emoji}},
		options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find reaction: %w", err)
	}
	return true, nil
}

// addReaction stores r; nothing changes when the member had made it
// already.
func (s *store) addReaction(ctx context.Context, r *reactionDoc) error {
	r.ID, r.At = reactionID(r.MessageID, r.UserID, r.Emoji), s.nowMs()
	if _, err := s.reactions.InsertOne(ctx, r); err != nil && !mongo.IsDuplicateKeyError(err) {
		return fmt.Errorf("add reaction: %w", err)
	}
	return nil
}

// removeReaction deletes the member's reaction with emoji, if there is
// one.
func (s *store) removeReaction(ctx context.Context, messageID bson.ObjectID, userID int, emoji string) error {
	if _, err := s.reactions.DeleteOne(ctx, bson.D{{Key: "_id", Value: reactionID(messageID, userID, emoji)}}); err != nil {
		return fmt.Errorf("remove reaction: %w", err)
	}
	return nil
}

// bumpReactions raises the message's reactions version, and returns the
// message as it is after it.
func (s *store) bumpReactions(ctx context.Context, messageID bson.ObjectID) (*messageDoc, error) {
	var m messageDoc
	err := s.locked(ctx, messageLock(messageID), func() error {
		return s.messages.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: messageID}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "reactVer", Value: int64(1)}}}},
			// The whole message: FerretDB 1.x takes no projection here.
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&m)
	})
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoMessage
	}
	if err != nil {
		return nil, fmt.Errorf("reactions version: %w", err)
	}
	return &m, nil
}

// dropReactions deletes the reactions of a deleted message. A reaction
// whose add raced with the delete is taken back by that add (it reads
// the message after storing it), so none is left behind.
func (s *store) dropReactions(ctx context.Context, m *messageDoc) error {
	if _, err := s.reactions.DeleteMany(ctx, bson.D{{Key: "messageId", Value: m.ID}}); err != nil {
		return fmt.Errorf("drop reactions: %w", err)
	}
	err := s.locked(ctx, messageLock(m.ID), func() error {
		_, err := s.messages.UpdateOne(ctx, bson.D{{Key: "_id", Value: m.ID}},
			bson.D{{Key: "$unset", Value: bson.D{{Key: "emojis", Value: ""}}}})
		return err
	})
	if err != nil {
		return fmt.Errorf("drop reactions: %w", err)
	}
	m.Emojis = nil
	return nil
}

// reactionCount is how many members reacted to a message with one emoji.
type reactionCount struct {
	Emoji string
	N     int
	// First is when the earliest of these reactions was made.
	First time.Time
	// Mine tells whether the viewer is one of them.
	Mine bool
}

// reactionCounts counts the reactions to each of the messages, one entry
// per emoji, the most used first (the earliest first among equals), with
// whether viewer made one (never for forEvent).
func (s *store) reactionCounts(ctx context.Context, messageIDs []bson.ObjectID, viewer int) (map[bson.ObjectID][]reactionCount, error) {
	out := map[bson.ObjectID][]reactionCount{}
	if len(messageIDs) == 0 {
		return out, nil
	}
	if s.locks.Serial() {
		// FerretDB 1.x knows no $min nor $eq in an aggregation: it reads
		// the reactions, and they are counted here. It scans the
		// collection for any query anyway.
		return s.reactionCountsRead(ctx, messageIDs, viewer)
	}
	var rows []struct {
		ID struct {
			MessageID bson.ObjectID `bson:"m"`
			Emoji     string        `bson:"e"`
		} `bson:"_id"`
		N     int       `bson:"n"`
		First time.Time `bson:"first"`
		Mine  bool      `bson:"mine"`
	}
	cur, err := s.reactions.Aggregate(ctx, reactionsPipeline(messageIDs, viewer))
	if err != nil {
		return nil, fmt.Errorf("count reactions: %w", err)
	}
	if err := cur.All(ctx, &rows); err != nil {
		return nil, fmt.Errorf("count reactions: %w", err)
	}
	for _, r := range rows {
		out[r.ID.MessageID] = append(out[r.ID.MessageID], reactionCount{Emoji: r.ID.Emoji, N: r.N, First: r.First, Mine: r.Mine})
	}
	sortReactions(out)
	return out, nil
}

// reactionsPipeline is reactionCounts' aggregation: the count, the first
// time and the viewer's part by message and emoji, in one pass over the
// messages' entries in the reactions index.
func reactionsPipeline(messageIDs []bson.ObjectID, viewer int) mongo.Pipeline {
	group := bson.D{
		{Key: "_id", Value: bson.D{{Key: "m", Value: "$messageId"}, {Key: "e", Value: "$emoji"}}},
		{Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}},
		{Key: "first", Value: bson.D{{Key: "$min", Value: "$at"}}},
	}
	if viewer != forEvent {
		group = append(group, bson.E{Key: "mine", Value: bson.D{{Key: "$max", Value: bson.D{{Key: "$eq", Value: bson.A{"$userId", viewer}}}}}})
	}
	return mongo.Pipeline{
		{{Key: "$match", Value: bson.D{{Key: "messageId", Value: bson.D{{Key: "$in", Value: messageIDs}}}}}},
		{{Key: "$group", Value: group}},
	}
}

// reactionCountsRead is reactionCounts from the reactions themselves.
func (s *store) reactionCountsRead(ctx context.Context, messageIDs []bson.ObjectID, viewer int) (map[bson.ObjectID][]reactionCount, error) {
	cur, err := s.reactions.Find(ctx, bson.D{{Key: "messageId", Value: bson.D{{Key: "$in", Value: messageIDs}}}})
	if err != nil {
		return nil, fmt.Errorf("count reactions: %w", err)
	}
	var rs []reactionDoc
	if err := cur.All(ctx, &rs); err != nil {
		return nil, fmt.Errorf("count reactions: %w", err)
	}
	out := map[bson.ObjectID][]reactionCount{}
	for _, r := range rs {
		counts := out[r.MessageID]
		i := slices.IndexFunc(counts, func(c reactionCount) bool { return c.Emoji == r.Emoji })
		if i < 0 {
			i = len(counts)
			counts = append(counts, reactionCount{Emoji: r.Emoji, First: r.At})
		}
		c := &counts[i]
		c.N++
		if r.At.Before(c.First) {
			c.First = r.At
		}
		c.Mine = c.Mine || (viewer != forEvent && r.UserID == viewer)
		out[r.MessageID] = counts
	}
	sortReactions(out)
	return out, nil
}

// sortReactions orders each message's counts: the most used first, then
// the earliest, then by emoji, so that the order is the same on every
// read.
func sortReactions(byMessage map[bson.ObjectID][]reactionCount) {
	for _, counts := range byMessage {
		slices.SortFunc(counts, func(a, b reactionCount) int {
			return cmp.Or(cmp.Compare(b.N, a.N), a.First.Compare(b.First), cmp.Compare(a.Emoji, b.Emoji))
		})
	}
}

// reactionPage is the position after the last reaction of a
// ListReactions page.
type reactionPage struct {
	At     time.Time
	UserID int
}

// listReactionsQuery is the filter and options of a page of the
// reactions to a message with an emoji, the earliest first, after the
// cursor.
func listReactionsQuery(messageID bson.ObjectID, emoji string, after *reactionPage, limit int) (bson.D, *options.FindOptionsBuilder) {
	filter := bson.D{{Key: "messageId", Value: messageID}, {Key: "emoji", Value: emoji}}
	if after != nil {
		filter = append(filter,
			// The first condition alone lets the index bound the scan;
			// the $or breaks ties.
			bson.E{Key: "at", Value: bson.D{{Key: "$gte", Value: after.At}}},
			bson.E{Key: "$or", Value: bson.A{
				bson.D{{Key: "at", Value: bson.D{{Key: "$gt", Value: after.At}}}},
				bson.D{{Key: "userId", Value: bson.D{{Key: "$gt", Value: after.UserID}}}},
			}})
	}
	return filter, options.Find().
		SetSort(bson.D{{Key: "at", Value: 1}, {Key: "userId", Value: 1}}).
		SetProjection(bson.D{{Key: "userId", Value: 1}, {Key: "at", Value: 1}}).
		SetLimit(int64(limit))
}

// listReactions returns up to limit of the reactions to the message with
// emoji, the earliest first, after the cursor (see listReactionsQuery).
func (s *store) listReactions(ctx context.Context, messageID bson.ObjectID, emoji string, after *reactionPage, limit int) ([]reactionDoc, error) {
	filter, opts := listReactionsQuery(messageID, emoji, after, limit)
	cur, err := s.reactions.Find(ctx, filter, opts)
	if err != nil {
		return nil, fmt.Errorf("list reactions: %w", err)
	}
	var out []reactionDoc
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list reactions: %w", err)
	}
	return out, nil
}
