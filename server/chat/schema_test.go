package chat

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Data written by version 1 (members collection as the authority, unique
// compound indexes, messages without idemKey and seqKey) keeps working
// once Prepare has run.
func TestPrepare_UpgradesVersion1(t *testing.T) {
	ctx := context.Background()
	db := testDatabase(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	chats, members, messages := db.Collection("chats"), db.Collection("members"), db.Collection("messages")
	if _, err := messages.Indexes().CreateMany(ctx, []mongo.IndexModel{
		{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetUnique(true).SetName("chatId_seq_unique")},
		{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "senderId", Value: 1}, {Key: "clientMessageId", Value: 1}}, Options: options.Index().SetUnique(true).SetName("chatId_senderId_clientMessageId_unique")},
	}); err != nil {
		t.Fatal(err)
	}
	chatID := bson.NewObjectID()
	now := time.Now().UTC().Truncate(time.Millisecond)
	// Version 1's participants copy lagged the members collection: 3
	// joined, and 2 became admin.
	if _, err := chats.InsertOne(ctx, bson.D{
		{Key: "_id", Value: chatID}, {Key: "chatName", Value: "old"}, {Key: "chatType", Value: typeGroup},
		{Key: "participants", Value: bson.A{bson.D{{Key: "user_id", Value: 1}, {Key: "role", Value: roleAdmin}}, bson.D{{Key: "user_id", Value: 2}, {Key: "role", Value: roleMember}}}},
		{Key: "createdAt", Value: now}, {Key: "updatedAt", Value: now}, {Key: "pairKey", Value: "g:" + chatID.Hex()},
		{Key: "lastMessage", Value: bson.D{{Key: "seq", Value: int64(2)}, {Key: "sentAt", Value: now}}},
	}); err != nil {
		t.Fatal(err)
	}
	for i, m := range []struct {
		user int
		role string
	}{{1, roleAdmin}, {2, roleAdmin}, {3, roleMember}} {
		if _, err := members.InsertOne(ctx, bson.D{
			{Key: "_id", Value: chatID.Hex() + ":" + string(rune('0'+m.user))}, {Key: "chatId", Value: chatID},
			{Key: "userId", Value: m.user}, {Key: "role", Value: m.role}, {Key: "joinedAt", Value: now.Add(time.Duration(i) * time.Second)},
		}); err != nil {
			t.Fatal(err)
		}
	}
	for seq := int64(1); seq <= 2; seq++ {
		if _, err := messages.InsertOne(ctx, bson.D{
			{Key: "_id", Value: bson.NewObjectID()}, {Key: "chatId", Value: chatID}, {Key: "senderId", Value: 1},
			{Key: "text", Value: "old"}, {Key: "sentAt", Value: now}, {Key: "status", Value: statusSent},
			{Key: "seq", Value: seq}, {Key: "clientMessageId", Value: "c" + string(rune('0'+seq))},
		}); err != nil {
			t.Fatal(err)
		}
	}

	for range 2 { // twice: it must be idempotent
		if err := Prepare(ctx, log, db); err != nil {
			t.Fatal(err)
		}
	}

	s := newStore(db, nil, nil, "", time.Now)
	c, err := s.getChat(ctx, chatID)
	if err != nil {
		t.Fatal(err)
	}
	want := []participantDoc{{1, roleAdmin}, {2, roleAdmin}, {3, roleMember}}
	if !slices.Equal(c.Participants, want) || c.MembersVersion != 1 {
		t.Errorf("participants %v, version %d after the upgrade; want %v from the members collection, version 1", c.Participants, c.MembersVersion, want)
	}
	old, err := s.messageByKey(ctx, chatID, 1, "c2")
	if err != nil || old == nil || old.Seq != 2 {
		t.Fatalf("message by its old client id after the upgrade: %+v, %v; want seq 2", old, err)
	}
	specs, err := messages.Indexes().ListSpecifications(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sp := range specs {
		if sp.Name == "chatId_seq_unique" || sp.Name == "chatId_senderId_clientMessageId_unique" {
			t.Errorf("index %s of version 1 is still there", sp.Name)
		}
	}
	// A seq already used is refused by the new unique index.
	dup := messageDoc{ID: bson.NewObjectID(), ChatID: chatID, SenderID: 3, Seq: 2, SeqKey: seqKey(chatID, 2), IdemKey: idemKey(chatID, 3, "new"), SentAt: now}
	if _, err := messages.InsertOne(ctx, dup); !mongo.IsDuplicateKeyError(err) {
		t.Errorf("insert of a used seq after the upgrade: %v; want a duplicate key error", err)
	}
}
