package chat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/mongoindex"
)

// schemaVersion is the shape of the chat collections this code writes.
// Version 2: participants are the authority on membership (the members
// collection of version 1 is read once, to fill them), chats carry
// membersVersion, and messages carry idemKey and seqKey, with unique
// single-field indexes in place of the unique compound ones. Version 3:
// messages carry the words that search matches (see searchWords); the
// instances of version 2 must be stopped for the upgrade, as their
// messages would have none.
const schemaVersion = 3

// Indexes of the chat collections. Every query on the message path is
// answered from one of them (see TestIndexes_HotPaths).
var (
	chatIndexes = []mongo.IndexModel{
		{Keys: bson.D{{Key: "pairKey", Value: 1}}, Options: options.Index().SetUnique(true).SetName("pairKey_unique")},
		// ListChats and contacts: a user's chats, most recent first.
		{Keys: bson.D{{Key: "participants.user_id", Value: 1}, {Key: "updatedAt", Value: -1}, {Key: "_id", Value: -1}}, Options: options.Index().SetName("participants_updatedAt_id")},
	}
	messageIndexes = []mongo.IndexModel{
		{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetName("chatId_seq")},
		{Keys: bson.D{{Key: "seqKey", Value: 1}}, Options: options.Index().SetUnique(true).SetName("seqKey_unique")},
		{Keys: bson.D{{Key: "idemKey", Value: 1}}, Options: options.Index().SetUnique(true).SetName("idemKey_unique")},
		// SearchMessages: the messages of the caller's chats by the start
		// of a word.
		{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "words", Value: 1}}, Options: options.Index().SetName("chatId_words")},
	}
	positionIndexes = []mongo.IndexModel{
		{Keys: bson.D{{Key: "chatId", Value: 1}}, Options: options.Index().SetName("chatId")},
	}
	// A message's reactions: counted by emoji, listed by emoji in the
	// order they came, the viewer's own among them.
	reactionIndexes = []mongo.IndexModel{
		{Keys: bson.D{{Key: "messageId", Value: 1}, {Key: "emoji", Value: 1}, {Key: "at", Value: 1}, {Key: "userId", Value: 1}}, Options: options.Index().SetName("messageId_emoji_at_userId")},
	}
	// Indexes of version 1 that version 2 replaces: a unique compound
	// index led by chatId slows every insert into a big chat on
	// FerretDB 2 + DocumentDB.
	oldMessageIndexes = []string{"chatId_seq_unique", "chatId_senderId_clientMessageId_unique"}
)

// Prepare brings the database up to what this code expects: it upgrades
// documents written by earlier versions (see schemaVersion) and creates
// the indexes. It is idempotent, cheap once done, and safe to run from
// every instance at start-up; an upgrade from version 1 wants the
// instances of version 1 stopped first.
func Prepare(ctx context.Context, log *slog.Logger, db *mongo.Database) error {
	meta := db.Collection("schema")
	var v struct {
		Version int `bson:"version"`
	}
	err := meta.FindOne(ctx, bson.D{{Key: "_id", Value: "chat"}}).Decode(&v)
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		return fmt.Errorf("schema version: %w", err)
	}
	if v.Version < schemaVersion {
		if err := upgradeChats(ctx, log, db); err != nil {
			return err
		}
		if err := upgradeMessages(ctx, log, db); err != nil {
			return err
		}
		if err := upgradeWords(ctx, log, db); err != nil {
			return err
		}
	}
	// First, as MongoDB refuses a second index on the same keys.
	if err := mongoindex.Drop(ctx, db.Collection("messages"), oldMessageIndexes); err != nil {
		return fmt.Errorf("drop old indexes on messages: %w", err)
	}
	for _, x := range []struct {
		c      *mongo.Collection
		models []mongo.IndexModel
	}{
		{db.Collection("chats"), chatIndexes},
		{db.Collection("messages"), messageIndexes},
		{db.Collection("positions"), positionIndexes},
		{db.Collection("chatSettings"), settingsIndexes},
		{db.Collection("hiddenMessages"), hiddenIndexes},
		{db.Collection("invites"), inviteIndexes},
		{db.Collection("reactions"), reactionIndexes},
		{db.Collection("emptyChats"), emptyIndexes},
	} {
		if err := mongoindex.Ensure(ctx, x.c, x.models); err != nil {
			return fmt.Errorf("create indexes on %s: %w", x.c.Name(), err)
		}
	}
	if err := backfillEmpty(ctx, log, db); err != nil {
		return err
	}
	if err := backfillInviteLeft(ctx, db); err != nil {
		return err
	}
	if v.Version < schemaVersion {
		_, err := meta.UpdateOne(ctx, bson.D{{Key: "_id", Value: "chat"}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "version", Value: schemaVersion}}}}, options.UpdateOne().SetUpsert(true))
		if err != nil {
			return fmt.Errorf("schema version: %w", err)
		}
	}
	return nil
}

// upgradeChats gives every chat without a membersVersion the participants
// that the members collection of version 1 holds for it (the authority
// then; participants was its copy), and membersVersion 1.
func upgradeChats(ctx context.Context, log *slog.Logger, db *mongo.Database) error {
	chats, members := db.Collection("chats"), db.Collection("members")
	cur, err := chats.Find(ctx, bson.D{{Key: "membersVersion", Value: bson.D{{Key: "$exists", Value: false}}}},
		options.Find().SetProjection(bson.D{{Key: "participants", Value: 1}}))
	if err != nil {
		return fmt.Errorf("upgrade chats: %w", err)
	}
	defer cur.Close(ctx)
	n := 0
	for cur.Next(ctx) {
		var c chatDoc
		if err := cur.Decode(&c); err != nil {
			return fmt.Errorf("upgrade chats: %w", err)
		}
		mc, err := members.Find(ctx, bson.D{{Key: "chatId", Value: c.ID}},
			options.Find().SetSort(bson.D{{Key: "joinedAt", Value: 1}, {Key: "userId", Value: 1}}))
		if err != nil {
			return fmt.Errorf("upgrade chats: %w", err)
		}
		var ms []struct {
			UserID int    `bson:"userId"`
			Role   string `bson:"role"`
		}
		if err := mc.All(ctx, &ms); err != nil {
			return fmt.Errorf("upgrade chats: %w", err)
		}
		parts := c.Participants
		if len(ms) > 0 {
			parts = make([]participantDoc, len(ms))
			for i, m := range ms {
				parts[i] = participantDoc{UserID: m.UserID, Role: m.Role}
			}
		}
		if parts == nil {
			parts = []participantDoc{}
		}
		if _, err := chats.UpdateOne(ctx, bson.D{{Key: "_id", Value: c.ID}, versionIs(0)}, bson.D{{Key: "$set", Value: bson.D{
			{Key: "participants", Value: parts}, {Key: "membersVersion", Value: int64(1)},
		}}}); err != nil {
			return fmt.Errorf("upgrade chats: %w", err)
		}
		n++
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("upgrade chats: %w", err)
	}
	if n > 0 {
		log.InfoContext(ctx, "upgraded chats: participants from the members collection", "chats", n)
	}
	return nil
}

// upgradeMessages fills idemKey and seqKey on messages written before
// they existed.
func upgradeMessages(ctx context.Context, log *slog.Logger, db *mongo.Database) error {
	messages := db.Collection("messages")
	n := 0
	for {
		cur, err := messages.Find(ctx, bson.D{{Key: "seqKey", Value: bson.D{{Key: "$exists", Value: false}}}},
			options.Find().SetLimit(1000).SetProjection(bson.D{
				{Key: "chatId", Value: 1}, {Key: "senderId", Value: 1}, {Key: "clientMessageId", Value: 1}, {Key: "seq", Value: 1},
			}))
		if err != nil {
			return fmt.Errorf("upgrade messages: %w", err)
		}
		var ms []messageDoc
		if err := cur.All(ctx, &ms); err != nil {
			return fmt.Errorf("upgrade messages: %w", err)
		}
		if len(ms) == 0 {
			break
		}
		models := make([]mongo.WriteModel, len(ms))
		for i, m := range ms {
			models[i] = mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: m.ID}}).SetUpdate(bson.D{{Key: "$set", Value: bson.D{
				{Key: "idemKey", Value: idemKey(m.ChatID, m.SenderID, m.ClientMessageID)},
				{Key: "seqKey", Value: seqKey(m.ChatID, m.Seq)},
			}}})
		}
		if _, err := messages.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false)); err != nil {
			return fmt.Errorf("upgrade messages: %w", err)
		}
		n += len(ms)
	}
	if n > 0 {
		log.InfoContext(ctx, "upgraded messages: idempotency and seq keys", "messages", n)
	}
	return nil
}

// upgradeWords fills the search words of messages written before they
// existed.
func upgradeWords(ctx context.Context, log *slog.Logger, db *mongo.Database) error {
	messages := db.Collection("messages")
	n := 0
	// By _id, each batch after the last: one pass over the collection.
	last := bson.NilObjectID
	for {
		cur, err := messages.Find(ctx, bson.D{
			{Key: "_id", Value: bson.D{{Key: "$gt", Value: last}}},
			{Key: "words", Value: bson.D{{Key: "$exists", Value: false}}},
			{Key: "deletedAt", Value: bson.D{{Key: "$exists", Value: false}}},
		}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(1000).SetProjection(bson.D{{Key: "text", Value: 1}}))
		if err != nil {
			return fmt.Errorf("upgrade messages: %w", err)
		}
		var ms []messageDoc
		if err := cur.All(ctx, &ms); err != nil {
			return fmt.Errorf("upgrade messages: %w", err)
		}
		if len(ms) == 0 {
			break
		}
		last = ms[len(ms)-1].ID
		models := make([]mongo.WriteModel, len(ms))
		for i, m := range ms {
			words := searchWords(m.Text)
			if words == nil {
				words = []string{} // so that the message is not read again
			}
			models[i] = mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: m.ID}}).
				SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "words", Value: words}}}})
		}
		if _, err := messages.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false)); err != nil {
			return fmt.Errorf("upgrade messages: %w", err)
		}
		n += len(ms)
	}
	if n > 0 {
		log.InfoContext(ctx, "upgraded messages: search words", "messages", n)
	}
	return nil
}
