package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// PushChat is what a push notification says of a chat, and who of its
// members would rather not hear of it.
type PushChat struct {
	// Type is "private" or "group".
	Type string
	// Title is a group's name; empty for a private chat.
	Title string
	// Members are the chat's members now.
	Members []int
	// Muted lists the users asked about who have the chat muted now.
	Muted []int
}

// PushChat describes the chat for push notifications to users: its type
// and name, its members, and which of users muted it. ok is false when
// there is no such chat.
func (s *Service) PushChat(ctx context.Context, chatID string, users []int) (_ PushChat, ok bool, err error) {
	id, err := bson.ObjectIDFromHex(chatID)
	if err != nil {
		return PushChat{}, false, nil
	}
	c, err := s.store.getChat(ctx, id)
	if errors.Is(err, errNoChat) {
		return PushChat{}, false, nil
	}
	if err != nil {
		return PushChat{}, false, err
	}
	out := PushChat{Type: c.Type, Members: audience(c)}
	if c.Type == typeGroup {
		out.Title = c.Name
	}
	if len(users) == 0 {
		return out, true, nil
	}
	ids := make(bson.A, len(users))
	for i, u := range users {
		ids[i] = settingsID(id, u)
	}
	cur, err := s.store.chatSettings.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return PushChat{}, false, fmt.Errorf("chat settings: %w", err)
	}
	var docs []settingsDoc
	if err := cur.All(ctx, &docs); err != nil {
		return PushChat{}, false, fmt.Errorf("chat settings: %w", err)
	}
	now := s.now()
	for _, d := range docs {
		if (d.MutedForever || d.MutedUntil != nil && d.MutedUntil.After(now)) && !slices.Contains(out.Muted, d.UserID) {
			out.Muted = append(out.Muted, d.UserID)
		}
	}
	return out, true, nil
}

// MessageSender returns who sent the chat's message; ok is false when
// there is no such message, or it was deleted.
func (s *Service) MessageSender(ctx context.Context, chatID, messageID string) (sender int, ok bool, err error) {
	cid, err1 := bson.ObjectIDFromHex(chatID)
	mid, err2 := bson.ObjectIDFromHex(messageID)
	if err1 != nil || err2 != nil {
		return 0, false, nil
	}
	var m messageDoc
	err = s.store.messages.FindOne(ctx, bson.D{{Key: "_id", Value: mid}, {Key: "chatId", Value: cid}},
		options.FindOne().SetProjection(bson.D{{Key: "senderId", Value: 1}, {Key: "deletedAt", Value: 1}})).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("message sender: %w", err)
	}
	return m.SenderID, m.DeletedAt == nil, nil
}
