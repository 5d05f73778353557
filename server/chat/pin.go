package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// MaxPins is the most messages a chat may have pinned at once.
const MaxPins = 50

// pinDoc is a pinned message, as the chat document keeps it. Pins live
// on the chat document, in the order they were pinned: they are few
// (MaxPins), every answer that renders messages has the chat already,
// and the limit holds in one conditional update.
type pinDoc struct {
	MessageID bson.ObjectID `bson:"messageId"`
	Seq       int64         `bson:"seq"`
	PinnedBy  int           `bson:"pinnedBy"`
	PinnedAt  time.Time     `bson:"pinnedAt"`
}

var (
	errPinNotAdmin = connect.NewError(connect.CodePermissionDenied, errors.New("only the group's admins may pin messages"))
	errTooManyPins = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("a chat has at most %d pinned messages", MaxPins))
	errPinDeleted  = connect.NewError(connect.CodeFailedPrecondition, errors.New("the message was deleted"))
)

// pinOf returns the message's pin as the chat holds it, nil when it is
// not pinned. A deleted message shows no pin: DeleteMessage unpins it,
// and a chat read in between may still list it.
func pinOf(c *chatDoc, m *messageDoc) *parleyv1.Pin {
	if m.DeletedAt != nil {
		return nil
	}
	i := slices.IndexFunc(c.Pins, func(p pinDoc) bool { return p.MessageID == m.ID })
	if i < 0 {
		return nil
	}
	return &parleyv1.Pin{PinnedBy: int32(c.Pins[i].PinnedBy), PinnedAt: timestamppb.New(c.Pins[i].PinnedAt)}
}

// pinAccess loads a message for the caller to pin or unpin: any member of
// a private chat may, a group's admins only.
func (s *Service) pinAccess(ctx context.Context, chatHex, messageHex string) (*chatDoc, *member, *messageDoc, error) {
	c, me, msg, err := s.message(ctx, chatHex, messageHex)
	if err != nil {
		return nil, nil, nil, err
	}
	if c.Type == typeGroup && me.Role != roleAdmin {
		return nil, nil, nil, errPinNotAdmin
	}
	return c, me, msg, nil
}

// PinMessage pins a message in its chat; pinning a pinned message
// changes nothing, and announces the pin again (by its pinner).
func (s *Service) PinMessage(
	ctx context.Context, req *connect.Request[parleyv1.PinMessageRequest],
) (*connect.Response[parleyv1.PinMessageResponse], error) {
	c, me, msg, err := s.pinAccess(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	if msg.DeletedAt != nil {
		return nil, errPinDeleted
	}
	if err := s.mayActInPrivate(ctx, c, me.UserID); err != nil {
		return nil, s.internal(ctx, "pin message", err)
	}
	pin, added, ver, err := s.store.pin(ctx, c.ID, pinDoc{MessageID: msg.ID, Seq: msg.Seq, PinnedBy: me.UserID, PinnedAt: s.store.nowMs()})
	if err != nil {
		return nil, s.internal(ctx, "pin message", err)
	}
	if added {
		// A delete that read the message before the pin was written
		// found nothing to unpin; it has marked the message deleted
		// before looking, so reading the message now catches it.
		now, err := s.store.getMessage(ctx, c.ID, msg.ID)
		if err != nil && !errors.Is(err, errNoMessage) {
			return nil, s.internal(ctx, "pin message", err)
		}
		if err != nil || now.DeletedAt != nil {
			ver, err := s.store.unpin(ctx, c.ID, msg.ID)
			if err != nil {
				return nil, s.internal(ctx, "pin message", err)
			}
			// Another pin of it, made meanwhile, may have announced
			// the pin: the unpin is announced after it.
			if ver > 0 {
				if err := s.publishPins(ctx, c, msg, false, me.UserID, ver); err != nil {
					return nil, err
				}
			}
			return nil, errPinDeleted
		}
	}
	// Announced when the message was pinned already too: the call that
	// pinned it may have failed to (errNotDelivered).
	if err := s.publishPins(ctx, c, msg, true, pin.PinnedBy, ver); err != nil {
		return nil, err
	}
	c.Pins = append(withoutPin(c.Pins, msg.ID), pin)
	p, err := s.positions(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "pin message", err)
	}
	out, err := s.renderMessage(ctx, c, me.UserID, p, msg)
	if err != nil {
		return nil, s.internal(ctx, "pin message", err)
	}
	return connect.NewResponse(&parleyv1.PinMessageResponse{Message: out}), nil
}

// UnpinMessage unpins a message; unpinning one that is not pinned changes
// nothing, and announces that it is not.
func (s *Service) UnpinMessage(
	ctx context.Context, req *connect.Request[parleyv1.UnpinMessageRequest],
) (*connect.Response[parleyv1.UnpinMessageResponse], error) {
	c, me, msg, err := s.pinAccess(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	// The blocker would hear of it, and lose its pin.
	if err := s.mayActInPrivate(ctx, c, me.UserID); err != nil {
		return nil, s.internal(ctx, "unpin message", err)
	}
	ver, err := s.store.unpin(ctx, c.ID, msg.ID)
	if err != nil {
		return nil, s.internal(ctx, "unpin message", err)
	}
	announce := true
	if ver == 0 { // it was not pinned
		// Announced when it was not pinned too: the call that unpinned
		// it may have failed to (errNotDelivered). With the version the
		// chat was read at, after that call: a change since then has a
		// higher one. Unless that read still had it pinned (another
		// unpin came in between): then as the chat is after it, and not
		// at all if pinned again meanwhile (that pin's event tells).
		ver = c.PinsVer
		if hasPin(c.Pins, msg.ID) {
			if c, err = s.store.getChat(ctx, c.ID); err != nil {
				return nil, s.internal(ctx, "unpin message", err)
			}
			ver, announce = c.PinsVer, !hasPin(c.Pins, msg.ID)
		}
	}
	if announce {
		if err := s.publishPins(ctx, c, msg, false, me.UserID, ver); err != nil {
			return nil, err
		}
		c.Pins = withoutPin(c.Pins, msg.ID)
	}
	p, err := s.positions(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "unpin message", err)
	}
	out, err := s.renderMessage(ctx, c, me.UserID, p, msg)
	if err != nil {
		return nil, s.internal(ctx, "unpin message", err)
	}
	return connect.NewResponse(&parleyv1.UnpinMessageResponse{Message: out}), nil
}

// withoutPin returns a copy of pins without the message's.
func withoutPin(pins []pinDoc, messageID bson.ObjectID) []pinDoc {
	return slices.DeleteFunc(slices.Clone(pins), func(p pinDoc) bool { return p.MessageID == messageID })
}

// unpinDeleted unpins a message DeleteMessage deleted (or, on a retry,
// had deleted), announcing it if it was pinned, and takes it out of c's
// pins, which the answer and the event render.
func (s *Service) unpinDeleted(ctx context.Context, c *chatDoc, actor int, m *messageDoc) error {
	ver, err := s.store.unpin(ctx, c.ID, m.ID)
	if err != nil {
		return s.internal(ctx, "delete message", err)
	}
	c.Pins = withoutPin(c.Pins, m.ID)
	if ver == 0 { // it was not pinned
		return nil
	}
	return s.publishPins(ctx, c, m, false, actor, ver)
}

// ListPinnedMessages returns the chat's pinned messages, the most
// recently pinned first.
func (s *Service) ListPinnedMessages(
	ctx context.Context, req *connect.Request[parleyv1.ListPinnedMessagesRequest],
) (*connect.Response[parleyv1.ListPinnedMessagesResponse], error) {
	_, c, me, err := s.access(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	res := &parleyv1.ListPinnedMessagesResponse{}
	if len(c.Pins) == 0 {
		return connect.NewResponse(res), nil
	}
	ids := make([]bson.ObjectID, len(c.Pins))
	for i, p := range c.Pins {
		ids[i] = p.MessageID
	}
	found, err := s.store.messagesByID(ctx, c.ID, ids)
	if err != nil {
		return nil, s.internal(ctx, "list pinned messages", err)
	}
	// Pins are kept in the order they were made: the latest is last.
	docs := make([]messageDoc, 0, len(found))
	for i := len(c.Pins) - 1; i >= 0; i-- {
		if m, ok := found[c.Pins[i].MessageID]; ok && m.DeletedAt == nil {
			docs = append(docs, m)
		}
	}
	if len(docs) > 0 {
		if docs, err = s.store.withoutHiddenIDs(ctx, me.UserID, docs); err != nil {
			return nil, s.internal(ctx, "list pinned messages", err)
		}
	}
	p, err := s.positions(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "list pinned messages", err)
	}
	if res.Messages, err = s.renderMessages(ctx, c, me.UserID, p, docs); err != nil {
		return nil, s.internal(ctx, "list pinned messages", err)
	}
	return connect.NewResponse(res), nil
}

// publishPins announces to the chat's participants that a message was
// pinned or unpinned, as of the chat's pins version ver.
func (s *Service) publishPins(ctx context.Context, c *chatDoc, m *messageDoc, pinned bool, actor int, ver int64) error {
	if s.events == nil {
		return nil
	}
	ev := &parleyv1.Event{Kind: &parleyv1.Event_PinsChanged{PinsChanged: &parleyv1.PinsChanged{
		ChatId: c.ID.Hex(), MessageId: m.ID.Hex(), Seq: m.Seq, Pinned: pinned, ActorId: int32(actor), Version: ver,
	}}}
	return s.publishTo(ctx, c.ID, audience(c), ev)
}

// pin adds p to the chat's pins unless its message is pinned already or
// the chat has MaxPins: one conditional update. It returns the message's
// pin, p or the one found, whether it added p, and the chat's pins
// version after the pin (or as read with the pin found). Pins change
// neither updatedAt (a pin does not move the chat up the list) nor
// membersVersion (sends do not check them).
func (s *store) pin(ctx context.Context, chatID bson.ObjectID, p pinDoc) (pinDoc, bool, int64, error) {
	var c *chatDoc
	added, ver := false, int64(0)
	err := s.locked(ctx, chatLock(chatID), func() (err error) {
		if s.locks.Serial() {
			// FerretDB 1.x matches no condition on a field of an
			// array's documents (pins.messageId); under the chat's
			// lock, reading the pins and writing them back is as good.
			if c, err = s.getChat(ctx, chatID); err != nil || hasPin(c.Pins, p.MessageID) || len(c.Pins) >= MaxPins {
				return err
			}
			added, ver = true, c.PinsVer+1
			return s.setPins(ctx, chatID, append(c.Pins, p), ver)
		}
		for {
			ver, err = s.changePins(ctx, bson.D{
				{Key: "_id", Value: chatID},
				{Key: "pins.messageId", Value: bson.D{{Key: "$ne", Value: p.MessageID}}},
				{Key: "pins." + strconv.Itoa(MaxPins-1), Value: bson.D{{Key: "$exists", Value: false}}},
			}, bson.E{Key: "$push", Value: bson.D{{Key: "pins", Value: p}}})
			if err != nil {
				return fmt.Errorf("pin message: %w", err)
			}
			if added = ver > 0; added {
				return nil
			}
			if c, err = s.getChat(ctx, chatID); err != nil || hasPin(c.Pins, p.MessageID) || len(c.Pins) >= MaxPins {
				return err
			}
			// Unpinned, or another message unpinned, since the update
			// found it pinned or the pins full: again.
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	})
	switch {
	case err != nil:
		return pinDoc{}, false, 0, err
	case added:
		return p, true, ver, nil
	}
	if i := slices.IndexFunc(c.Pins, func(q pinDoc) bool { return q.MessageID == p.MessageID }); i >= 0 {
		return c.Pins[i], false, c.PinsVer, nil
	}
	return pinDoc{}, false, 0, errTooManyPins
}

// unpin takes the message out of the chat's pins, and returns the chat's
// pins version after the unpin: 0 when the message was not pinned.
func (s *store) unpin(ctx context.Context, chatID, messageID bson.ObjectID) (int64, error) {
	ver := int64(0)
	err := s.locked(ctx, chatLock(chatID), func() (err error) {
		if s.locks.Serial() {
			// As in pin.
			c, err := s.getChat(ctx, chatID)
			if err != nil || !hasPin(c.Pins, messageID) {
				return err
			}
			ver = c.PinsVer + 1
			return s.setPins(ctx, chatID, withoutPin(c.Pins, messageID), ver)
		}
		ver, err = s.changePins(ctx, bson.D{{Key: "_id", Value: chatID}, {Key: "pins.messageId", Value: messageID}},
			bson.E{Key: "$pull", Value: bson.D{{Key: "pins", Value: bson.D{{Key: "messageId", Value: messageID}}}}})
		if err != nil {
			return fmt.Errorf("unpin message: %w", err)
		}
		return nil
	})
	return ver, err
}

// changePins applies change to the chat that filter matches, raising its
// pins version in the same update, and returns the version after it (0:
// the filter matched no chat).
func (s *store) changePins(ctx context.Context, filter bson.D, change bson.E) (int64, error) {
	var c chatDoc
	err := s.chats.FindOneAndUpdate(ctx, filter,
		bson.D{change, {Key: "$inc", Value: bson.D{{Key: "pinsVer", Value: int64(1)}}}},
		options.FindOneAndUpdate().SetProjection(bson.D{{Key: "pinsVer", Value: 1}}).SetReturnDocument(options.After)).Decode(&c)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return c.PinsVer, nil
}

// setPins replaces the chat's pins, with their version, on FerretDB 1.x
// under the chat's lock.
func (s *store) setPins(ctx context.Context, chatID bson.ObjectID, pins []pinDoc, ver int64) error {
	if _, err := s.chats.UpdateOne(ctx, bson.D{{Key: "_id", Value: chatID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "pins", Value: pins}, {Key: "pinsVer", Value: ver}}}}); err != nil {
		return fmt.Errorf("set pins: %w", err)
	}
	return nil
}

func hasPin(pins []pinDoc, messageID bson.ObjectID) bool {
	return slices.ContainsFunc(pins, func(p pinDoc) bool { return p.MessageID == messageID })
}

// messagesByID loads the chat's messages with the ids, in one query.
func (s *store) messagesByID(ctx context.Context, chatID bson.ObjectID, ids []bson.ObjectID) (map[bson.ObjectID]messageDoc, error) {
	cur, err := s.messages.Find(ctx, bson.D{
		{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
		{Key: "chatId", Value: chatID},
	})
	if err != nil {
		return nil, fmt.Errorf("messages by id: %w", err)
	}
	var docs []messageDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("messages by id: %w", err)
	}
	out := make(map[bson.ObjectID]messageDoc, len(docs))
	for _, m := range docs {
		out[m.ID] = m
	}
	return out, nil
}
