package chat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
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

// MaxPinnedChats is how many chats a user may pin to the top of its list.
const MaxPinnedChats = 10

// settingsDoc is a document of the chatSettings collection: one member's
// own settings of one chat, apart from the chat so that they cost the
// chat's other members nothing, and absent until the member changes one.
type settingsDoc struct {
	ID     string        `bson:"_id"` // "<chat id>:<user id>"
	ChatID bson.ObjectID `bson:"chatId"`
	UserID int           `bson:"userId"`
	// Muted for ever, or until MutedUntil.
	MutedForever bool       `bson:"mutedForever,omitempty"`
	MutedUntil   *time.Time `bson:"mutedUntil,omitempty"`
	Archived     bool       `bson:"archived,omitempty"`
	PinnedAt     *time.Time `bson:"pinnedAt,omitempty"`
	// PinOrder orders the pins, the latest first: the pin's time in
	// nanoseconds, finer than PinnedAt's milliseconds.
	PinOrder int64 `bson:"pinOrder,omitempty"`
}

func settingsID(chatID bson.ObjectID, userID int) string {
	return chatID.Hex() + ":" + strconv.Itoa(userID)
}

// hiddenDoc is a document of the hiddenMessages collection: a message a
// member deleted for itself.
type hiddenDoc struct {
	ID        string        `bson:"_id"` // "<message id>:<user id>"
	ChatID    bson.ObjectID `bson:"chatId"`
	UserID    int           `bson:"userId"`
	MessageID bson.ObjectID `bson:"messageId"`
	Seq       int64         `bson:"seq"`
}

func hiddenID(messageID bson.ObjectID, userID int) string {
	return messageID.Hex() + ":" + strconv.Itoa(userID)
}

// Indexes of the per-member collections.
var (
	settingsIndexes = []mongo.IndexModel{
		// ListChats: the user's archived and pinned chats.
		{Keys: bson.D{{Key: "userId", Value: 1}}, Options: options.Index().SetName("userId")},
	}
	hiddenIndexes = []mongo.IndexModel{
		// ListMessages: the messages of a page the reader hid.
		{Keys: bson.D{{Key: "chatId", Value: 1}, {Key: "userId", Value: 1}, {Key: "seq", Value: 1}}, Options: options.Index().SetName("chatId_userId_seq")},
	}
)

// settings returns the user's settings of the chats, by chat (none for a
// chat whose settings were never changed).
func (s *store) settings(ctx context.Context, userID int, chatIDs []bson.ObjectID) (map[bson.ObjectID]*settingsDoc, error) {
	out := make(map[bson.ObjectID]*settingsDoc)
	if len(chatIDs) == 0 {
		return out, nil
	}
	ids := make(bson.A, len(chatIDs))
	for i, c := range chatIDs {
		ids[i] = settingsID(c, userID)
	}
	cur, err := s.chatSettings.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return nil, fmt.Errorf("chat settings: %w", err)
	}
	var docs []settingsDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("chat settings: %w", err)
	}
	for i := range docs {
		out[docs[i].ChatID] = &docs[i]
	}
	return out, nil
}

// listed are the chats a user set apart in its list: those it pinned, the
// most recently pinned first, and those it archived.
type listed struct {
	pinned   []bson.ObjectID
	archived []bson.ObjectID
}

// apart returns the chats the user pinned or archived.
func (s *store) apart(ctx context.Context, userID int) (listed, error) {
	cur, err := s.chatSettings.Find(ctx, bson.D{
		{Key: "userId", Value: userID},
		{Key: "$or", Value: bson.A{
			bson.D{{Key: "archived", Value: true}},
			bson.D{{Key: "pinnedAt", Value: bson.D{{Key: "$exists", Value: true}}}},
		}},
	}, options.Find().SetProjection(bson.D{{Key: "chatId", Value: 1}, {Key: "archived", Value: 1}, {Key: "pinnedAt", Value: 1}, {Key: "pinOrder", Value: 1}}))
	if err != nil {
		return listed{}, fmt.Errorf("pinned and archived chats: %w", err)
	}
	var docs []settingsDoc
	if err := cur.All(ctx, &docs); err != nil {
		return listed{}, fmt.Errorf("pinned and archived chats: %w", err)
	}
	slices.SortFunc(docs, func(a, b settingsDoc) int { return cmp.Compare(b.PinOrder, a.PinOrder) })
	var out listed
	for _, d := range docs {
		if d.Archived {
			out.archived = append(out.archived, d.ChatID)
		} else if d.PinnedAt != nil {
			out.pinned = append(out.pinned, d.ChatID)
		}
	}
	return out, nil
}

// errTooManyPinned refuses a pin past MaxPinnedChats.
var errTooManyPinned = connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("at most %d chats can be pinned", MaxPinnedChats))

// updateSettings applies the change to the member's settings of the chat
// and returns them as they are after it. A pin (of a chat not pinned) is
// refused before anything is written when the member's pins are at
// MaxPinnedChats already, so that a refused change changes nothing. Pins
// are counted again after the pin is written, and a pin that made more
// than MaxPinnedChats is taken back: pins racing past the limit may all
// be refused, but never all kept (the rest of such a change stays).
func (s *store) updateSettings(ctx context.Context, chatID bson.ObjectID, userID int, set, unset bson.D, pin bool) (*settingsDoc, error) {
	id := settingsID(chatID, userID)
	pinned := func() (int64, error) {
		n, err := s.chatSettings.CountDocuments(ctx, bson.D{
			{Key: "userId", Value: userID}, {Key: "pinnedAt", Value: bson.D{{Key: "$exists", Value: true}}},
		})
		if err != nil {
			return 0, fmt.Errorf("count pinned chats: %w", err)
		}
		return n, nil
	}
	if pin {
		if n, err := pinned(); err != nil {
			return nil, err
		} else if n >= MaxPinnedChats {
			return nil, errTooManyPinned
		}
	}
	update := bson.D{{Key: "$setOnInsert", Value: bson.D{{Key: "chatId", Value: chatID}, {Key: "userId", Value: userID}}}}
	if len(set) > 0 {
		update = append(update, bson.E{Key: "$set", Value: set})
	}
	if len(unset) > 0 {
		update = append(update, bson.E{Key: "$unset", Value: unset})
	}
	var out settingsDoc
	err := s.locked(ctx, "settings:"+id, func() error {
		return s.chatSettings.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: id}}, update,
			options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)).Decode(&out)
	})
	if err != nil {
		return nil, fmt.Errorf("update chat settings: %w", err)
	}
	if !pin || out.PinnedAt == nil {
		return &out, nil
	}
	n, err := pinned()
	if err != nil {
		return nil, err
	}
	if n <= MaxPinnedChats {
		return &out, nil
	}
	err = s.locked(ctx, "settings:"+id, func() error {
		_, err := s.chatSettings.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "pinnedAt", Value: *out.PinnedAt}},
			bson.D{{Key: "$unset", Value: bson.D{{Key: "pinnedAt", Value: ""}, {Key: "pinOrder", Value: ""}}}})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("take back a pin: %w", err)
	}
	return nil, errTooManyPinned
}

// forgetSettings drops a former member's settings of the chat.
func (s *store) forgetSettings(ctx context.Context, chatID bson.ObjectID, userID int) error {
	if _, err := s.chatSettings.DeleteOne(ctx, bson.D{{Key: "_id", Value: settingsID(chatID, userID)}}); err != nil {
		return fmt.Errorf("forget chat settings: %w", err)
	}
	return nil
}

// hide records messages of the chat as deleted for the user. It is
// idempotent.
func (s *store) hide(ctx context.Context, userID int, ms []messageDoc) error {
	docs := make([]any, len(ms))
	for i, m := range ms {
		docs[i] = hiddenDoc{ID: hiddenID(m.ID, userID), ChatID: m.ChatID, UserID: userID, MessageID: m.ID, Seq: m.Seq}
	}
	_, err := s.hidden.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	var bulk mongo.BulkWriteException
	if errors.As(err, &bulk) && bulk.WriteConcernError == nil &&
		!slices.ContainsFunc(bulk.WriteErrors, func(e mongo.BulkWriteError) bool { return !mongo.IsDuplicateKeyError(e) }) {
		return nil // hidden before
	}
	if err != nil {
		return fmt.Errorf("hide messages: %w", err)
	}
	return nil
}

// withoutHidden returns ms (in seq order) without the messages the user
// hid, in one indexed read of the seqs they span.
func (s *store) withoutHidden(ctx context.Context, chatID bson.ObjectID, userID int, ms []messageDoc) ([]messageDoc, error) {
	if len(ms) == 0 {
		return ms, nil
	}
	cur, err := s.hidden.Find(ctx, bson.D{
		{Key: "chatId", Value: chatID}, {Key: "userId", Value: userID},
		{Key: "seq", Value: bson.D{{Key: "$gte", Value: ms[0].Seq}, {Key: "$lte", Value: ms[len(ms)-1].Seq}}},
	}, options.Find().SetProjection(bson.D{{Key: "seq", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("hidden messages: %w", err)
	}
	var docs []hiddenDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("hidden messages: %w", err)
	}
	if len(docs) == 0 {
		return ms, nil
	}
	gone := make(map[int64]bool, len(docs))
	for _, d := range docs {
		gone[d.Seq] = true
	}
	return slices.DeleteFunc(ms, func(m messageDoc) bool { return gone[m.Seq] }), nil
}

// toSettings renders a member's settings of a chat as they stand at now.
func toSettings(d *settingsDoc, now time.Time) *parleyv1.ChatSettings {
	out := &parleyv1.ChatSettings{}
	if d == nil {
		return out
	}
	switch {
	case d.MutedForever:
		out.Muted = true
	case d.MutedUntil != nil && d.MutedUntil.After(now):
		out.Muted, out.MutedUntil = true, timestamppb.New(*d.MutedUntil)
	}
	out.Archived = d.Archived
	if d.PinnedAt != nil {
		out.PinnedAt = timestamppb.New(*d.PinnedAt)
	}
	return out
}

// UpdateChatSettings changes the caller's own settings of a chat.
func (s *Service) UpdateChatSettings(
	ctx context.Context, req *connect.Request[parleyv1.UpdateChatSettingsRequest],
) (*connect.Response[parleyv1.UpdateChatSettingsResponse], error) {
	id, c, _, err := s.access(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	now := s.store.nowMs()
	var set, unset bson.D
	switch m := req.Msg.GetMute().(type) {
	case *parleyv1.UpdateChatSettingsRequest_MuteUntil:
		until := m.MuteUntil.AsTime().UTC().Truncate(time.Millisecond)
		if !until.After(now) {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("mute_until: not in the future"))
		}
		set = append(set, bson.E{Key: "mutedUntil", Value: until})
		unset = append(unset, bson.E{Key: "mutedForever", Value: ""})
	case *parleyv1.UpdateChatSettingsRequest_Muted:
		unset = append(unset, bson.E{Key: "mutedUntil", Value: ""})
		if m.Muted {
			set = append(set, bson.E{Key: "mutedForever", Value: true})
		} else {
			unset = append(unset, bson.E{Key: "mutedForever", Value: ""})
		}
	}
	// pin: this call pins the chat (it was not pinned), so it counts the
	// pins and takes its own back past the limit.
	pin := false
	if req.Msg.Archived != nil {
		if req.Msg.GetArchived() {
			set = append(set, bson.E{Key: "archived", Value: true})
			unset = append(unset, bson.E{Key: "pinnedAt", Value: ""}, bson.E{Key: "pinOrder", Value: ""})
		} else {
			unset = append(unset, bson.E{Key: "archived", Value: ""})
		}
	}
	if req.Msg.Pinned != nil {
		if req.Msg.GetPinned() {
			// A chat pinned already keeps its place.
			cur, err := s.store.settings(ctx, id.UserID, []bson.ObjectID{c.ID})
			if err != nil {
				return nil, s.internal(ctx, "update chat settings", err)
			}
			if st := cur[c.ID]; st == nil || st.PinnedAt == nil {
				set = append(set, bson.E{Key: "pinnedAt", Value: now}, bson.E{Key: "pinOrder", Value: s.now().UnixNano()})
				pin = true
			}
			if req.Msg.Archived == nil {
				unset = append(unset, bson.E{Key: "archived", Value: ""})
			}
		} else if !req.Msg.GetArchived() {
			// (Archiving unpinned it already.)
			unset = append(unset, bson.E{Key: "pinnedAt", Value: ""}, bson.E{Key: "pinOrder", Value: ""})
		}
	}
	st, err := s.store.updateSettings(ctx, c.ID, id.UserID, set, unset, pin)
	if err == nil && pin {
		// A pin that raced the member's leaving would outlive it and count
		// against the limit for ever: it goes with the membership.
		cur, gerr := s.store.getChat(ctx, c.ID)
		if gerr != nil && !errors.Is(gerr, errNoChat) {
			return nil, s.internal(ctx, "update chat settings", gerr)
		}
		if gerr != nil || memberCheck(cur, id.UserID) != nil {
			if ferr := s.store.forgetSettings(ctx, c.ID, id.UserID); ferr != nil {
				return nil, s.internal(ctx, "update chat settings", ferr)
			}
			return nil, errNotFound
		}
	}
	if errors.Is(err, errTooManyPinned) {
		return nil, err
	}
	if err != nil {
		return nil, s.internal(ctx, "update chat settings", err)
	}
	out := toSettings(st, now)
	if s.events != nil {
		ev := &parleyv1.Event{Kind: &parleyv1.Event_ChatSettingsChanged{ChatSettingsChanged: &parleyv1.ChatSettingsChanged{
			ChatId: c.ID.Hex(), Settings: out,
		}}}
		if err := s.publishTo(ctx, c.ID, []int{id.UserID}, ev); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&parleyv1.UpdateChatSettingsResponse{Settings: out}), nil
}

// DeleteMessagesForMe hides messages from the caller alone.
func (s *Service) DeleteMessagesForMe(
	ctx context.Context, req *connect.Request[parleyv1.DeleteMessagesForMeRequest],
) (*connect.Response[parleyv1.DeleteMessagesForMeResponse], error) {
	id, c, _, err := s.access(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	ids := make([]bson.ObjectID, len(req.Msg.GetMessageIds()))
	for i, hex := range req.Msg.GetMessageIds() {
		if ids[i], err = bson.ObjectIDFromHex(hex); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("message_ids: not a message id"))
		}
	}
	found, err := s.store.messagesByID(ctx, c.ID, ids)
	if err != nil {
		return nil, s.internal(ctx, "delete messages for me", err)
	}
	if len(found) != len(ids) {
		return nil, errMessageNotFound
	}
	ms := slices.SortedFunc(maps.Values(found), func(a, b messageDoc) int { return cmp.Compare(a.Seq, b.Seq) })
	if err := s.store.hide(ctx, id.UserID, ms); err != nil {
		return nil, s.internal(ctx, "delete messages for me", err)
	}
	if s.events != nil {
		e := &parleyv1.MessagesHidden{ChatId: c.ID.Hex()}
		for _, m := range ms {
			e.MessageIds, e.Seqs = append(e.MessageIds, m.ID.Hex()), append(e.Seqs, m.Seq)
		}
		if err := s.publishTo(ctx, c.ID, []int{id.UserID}, &parleyv1.Event{Kind: &parleyv1.Event_MessagesHidden{MessagesHidden: e}}); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&parleyv1.DeleteMessagesForMeResponse{}), nil
}

// memberCheck tells whether the user is a member of the chat (nil) or not
// (errNoChat).
func memberCheck(c *chatDoc, userID int) error {
	_, err := memberOf(c, userID)
	return err
}
