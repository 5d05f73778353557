package chat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Chats that nobody can read any more are deleted, with everything they
// hold: a group whose last member left (by LeaveChat, or by deleting its
// account), and a private chat both of whose members deleted their
// accounts. Their messages, the files sent in them, reactions, positions,
// invite links, the group's avatar and the chat's Redis keys go, then the
// chat.
//
// The change that leaves a chat without readers records it first in the
// emptyChats collection (emptyDoc), so that an instance that dies between
// the two leaves the record behind, and Purge, run now and again on every
// instance (RunPurge), deletes the chats recorded more than departureMemory
// ago: a LeaveChat retried within that time still finds its chat. Purge
// checks the chat again before it deletes anything, and only drops the
// record of a chat that has readers after all. A group without members
// cannot get one back: an invite link to it leads nowhere (errNoInvite),
// and every other way in is an admin's.

// emptyDoc is a document of the emptyChats collection: a chat that may
// have nobody left to read it, since At.
type emptyDoc struct {
	ChatID bson.ObjectID `bson:"_id"`
	At     time.Time     `bson:"at"`
}

var emptyIndexes = []mongo.IndexModel{
	// Purge: the chats recorded before a time.
	{Keys: bson.D{{Key: "at", Value: 1}}, Options: options.Index().SetName("at")},
}

// backfillEmpty records, once for the database, the groups that their
// last member left before the changes that empty a chat recorded it (see
// above): it reads every chat, and runs at start-up (Prepare). Private
// chats whose members were both deleted before then are not found: that
// takes the user database.
func backfillEmpty(ctx context.Context, log *slog.Logger, db *mongo.Database) error {
	meta := db.Collection("schema")
	const mark = "chat-empty-backfill"
	n, err := meta.CountDocuments(ctx, bson.D{{Key: "_id", Value: mark}})
	if err != nil || n > 0 {
		return err
	}
	cur, err := db.Collection("chats").Find(ctx, bson.D{
		{Key: "chatType", Value: typeGroup}, {Key: "participants", Value: bson.D{{Key: "$size", Value: 0}}},
	}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return fmt.Errorf("groups without members: %w", err)
	}
	var empty []emptyDoc
	if err := cur.All(ctx, &empty); err != nil {
		return fmt.Errorf("groups without members: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	for _, d := range empty {
		_, err := db.Collection("emptyChats").UpdateOne(ctx, bson.D{{Key: "_id", Value: d.ChatID}},
			bson.D{{Key: "$max", Value: bson.D{{Key: "at", Value: now}}}}, options.UpdateOne().SetUpsert(true))
		if err != nil {
			return fmt.Errorf("record an empty chat: %w", err)
		}
	}
	if len(empty) > 0 {
		log.Info("recorded the groups without members for purging", "count", len(empty))
	}
	_, err = meta.UpdateOne(ctx, bson.D{{Key: "_id", Value: mark}}, bson.D{{Key: "$set", Value: bson.D{{Key: "at", Value: now}}}}, options.UpdateOne().SetUpsert(true))
	return err
}

// markEmpty records that the chat may have no reader from now on (see
// above). Recorded again, it keeps the later time.
func (s *store) markEmpty(ctx context.Context, chatID bson.ObjectID) error {
	_, err := s.empties.UpdateOne(ctx, bson.D{{Key: "_id", Value: chatID}},
		bson.D{{Key: "$max", Value: bson.D{{Key: "at", Value: s.nowMs()}}}}, options.UpdateOne().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("record an empty chat: %w", err)
	}
	return nil
}

// purgeBatch is how many messages Purge deletes a command.
const purgeBatch = 500

// PurgeInterval is how often, on average, RunPurge purges.
const PurgeInterval = 5 * time.Minute

// RunPurge purges the chats left without readers (Purge) every interval
// or so until ctx ends.
func (s *Service) RunPurge(ctx context.Context, interval time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval/2 + rand.N(interval)):
		}
		n, err := s.Purge(ctx, s.now().Add(-departureMemory))
		if err != nil && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "purge chats without readers", "err", err, "purged", n)
		} else if n > 0 {
			s.log.InfoContext(ctx, "purged chats without readers", "count", n)
		}
	}
}

// Purge deletes the chats recorded as left without readers up to before
// (see above), at most 100 a call, and returns how many it deleted. It is
// idempotent, and safe to run on several instances at once.
func (s *Service) Purge(ctx context.Context, before time.Time) (int, error) {
	cur, err := s.store.empties.Find(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$lte", Value: before}}}},
		options.Find().SetSort(bson.D{{Key: "at", Value: 1}}).SetLimit(100))
	if err != nil {
		return 0, fmt.Errorf("chats without readers: %w", err)
	}
	var docs []emptyDoc
	if err := cur.All(ctx, &docs); err != nil {
		return 0, fmt.Errorf("chats without readers: %w", err)
	}
	n := 0
	var errs []error
	for _, d := range docs {
		purged, err := s.purge(ctx, d)
		if err != nil {
			if ctx.Err() != nil {
				return n, err
			}
			errs = append(errs, fmt.Errorf("chat %s: %w", d.ChatID.Hex(), err))
			// Tried again later, behind the others: chats that keep
			// failing do not hold the rest back.
			if err := s.store.markEmpty(ctx, d.ChatID); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if purged {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// purge deletes the chat of d if nobody can read it, and then d.
func (s *Service) purge(ctx context.Context, d emptyDoc) (bool, error) {
	c, err := s.store.getChat(ctx, d.ChatID)
	if errors.Is(err, errNoChat) {
		return false, s.store.forgetEmpty(ctx, d)
	}
	if err != nil {
		return false, err
	}
	readers, err := s.readers(ctx, c)
	if err != nil {
		return false, err
	}
	if readers {
		return false, s.store.forgetEmpty(ctx, d)
	}
	s.log.InfoContext(ctx, "purge a chat without readers", "chat", c.ID.Hex(), "type", c.Type, "last_seq", lastSeq(c))
	if err := s.purgeMessages(ctx, c.ID); err != nil {
		return false, err
	}
	if err := s.store.purgeRest(ctx, c); err != nil {
		return false, err
	}
	// One hash slot: every key names the chat in braces.
	keys := []string{
		s.seqs.key(c.ID), s.seqs.inflightKey(c.ID), s.store.versionKey(c.ID), s.store.changingKey(c.ID),
		s.store.offerKey(c.ID), s.store.appliedKey(c.ID),
	}
	if err := s.store.rdb.Del(ctx, keys...).Err(); err != nil {
		return false, fmt.Errorf("purge chat keys: %w", err)
	}
	if s.media != nil && c.AvatarURL != "" {
		if err := s.media.DeleteOfGroup(ctx, c.AvatarURL, c.ID); err != nil {
			return false, err
		}
	}
	// Last, so that a purge that stops part-way is taken up again; not
	// if its members changed meanwhile, which the next purge looks at.
	res, err := s.store.chats.DeleteOne(ctx, bson.D{{Key: "_id", Value: c.ID}, versionIs(c.MembersVersion)})
	if err != nil {
		return false, fmt.Errorf("delete chat: %w", err)
	}
	if res.DeletedCount == 0 {
		return false, nil
	}
	return true, s.store.forgetEmpty(ctx, d)
}

// readers reports whether anyone can still read the chat: a group with a
// member, a private chat with a member whose account is not deleted.
func (s *Service) readers(ctx context.Context, c *chatDoc) (bool, error) {
	if len(c.Participants) == 0 {
		return false, nil
	}
	if c.Type == typeGroup || s.users == nil {
		return true, nil
	}
	ids := make([]int, len(c.Participants))
	for i, p := range c.Participants {
		ids[i] = p.UserID
	}
	missing, err := s.users.MissingUsers(ctx, ids)
	if err != nil {
		return false, err
	}
	return len(missing) < len(ids), nil
}

// purgeMessages deletes the chat's messages, a batch at a time, with
// their files and reactions, which go first.
func (s *Service) purgeMessages(ctx context.Context, chatID bson.ObjectID) error {
	for {
		cur, err := s.store.messages.Find(ctx, bson.D{{Key: "chatId", Value: chatID}}, options.Find().
			SetSort(bson.D{{Key: "chatId", Value: 1}, {Key: "seq", Value: 1}}).SetLimit(purgeBatch).
			SetProjection(bson.D{{Key: "_id", Value: 1}, {Key: "attachments.mediaId", Value: 1}, {Key: "deletedAt", Value: 1}}))
		if err != nil {
			return fmt.Errorf("messages to purge: %w", err)
		}
		var msgs []messageDoc
		if err := cur.All(ctx, &msgs); err != nil {
			return fmt.Errorf("messages to purge: %w", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		ids := make([]bson.ObjectID, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
			// A deleted message's files went with it, unless the deletion
			// failed part-way: the media may still record it.
			if s.media != nil && (len(m.Attachments) > 0 || m.DeletedAt != nil) {
				if err := s.media.DeleteOfMessage(ctx, m.ID); err != nil {
					return err
				}
			}
		}
		in := bson.D{{Key: "$in", Value: ids}}
		if _, err := s.store.reactions.DeleteMany(ctx, bson.D{{Key: "messageId", Value: in}}); err != nil {
			return fmt.Errorf("purge reactions: %w", err)
		}
		if _, err := s.store.messages.DeleteMany(ctx, bson.D{{Key: "_id", Value: in}}); err != nil {
			return fmt.Errorf("purge messages: %w", err)
		}
	}
}

// purgeRest deletes what the chat keeps beside its messages: positions,
// messages hidden by members, members' settings (those of members who
// left lately, or of a private chat's two, whose leaving may have failed
// to forget them) and invite links.
func (s *store) purgeRest(ctx context.Context, c *chatDoc) error {
	byChat := bson.D{{Key: "chatId", Value: c.ID}}
	for _, coll := range []*mongo.Collection{s.positions, s.hidden, s.invites} {
		if _, err := coll.DeleteMany(ctx, byChat); err != nil {
			return fmt.Errorf("purge %s: %w", coll.Name(), err)
		}
	}
	var users []int
	for _, p := range c.Participants {
		users = append(users, p.UserID)
	}
	for _, l := range c.Left {
		users = append(users, l.UserID)
	}
	if len(users) > 0 {
		slices.Sort(users)
		_, err := s.chatSettings.DeleteMany(ctx, bson.D{
			{Key: "userId", Value: bson.D{{Key: "$in", Value: slices.Compact(users)}}}, {Key: "chatId", Value: c.ID},
		})
		if err != nil {
			return fmt.Errorf("purge settings: %w", err)
		}
	}
	return nil
}

// forgetEmpty drops d, unless the chat was recorded again since.
func (s *store) forgetEmpty(ctx context.Context, d emptyDoc) error {
	if _, err := s.empties.DeleteOne(ctx, bson.D{{Key: "_id", Value: d.ChatID}, {Key: "at", Value: d.At}}); err != nil {
		return fmt.Errorf("forget an empty chat: %w", err)
	}
	return nil
}
