package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/rpcerr"
)

// Events is where the chat service announces changes, live, to the users
// they concern (the live package's Hub).
type Events interface {
	// Publish logs the event for each user and delivers it to their open
	// streams; once it returns, no user can miss the event.
	Publish(ctx context.Context, userIDs []int, ev *parleyv1.Event) error
	// PublishWith is Publish with the caller's Redis commands in the same
	// round trip: before's ahead of the event's, after's behind them
	// (and again, if the event had to be sent again: see
	// live.Hub.PublishWith).
	PublishWith(ctx context.Context, userIDs []int, ev *parleyv1.Event, before, after func(redis.Pipeliner)) error
	// Notify delivers an event that changes nothing (typing) to the
	// users' open streams only.
	Notify(ctx context.Context, userIDs []int, ev *parleyv1.Event) error
}

// TypingTTL is how long a typing indication lasts unless repeated.
const TypingTTL = 6 * time.Second

// typingLimit bounds SendTyping per user and chat.
var typingLimit = redis_rate.Limit{Rate: 10, Burst: 10, Period: 10 * time.Second}

// errNotDelivered answers a change that was stored but could not be
// announced; repeating the call completes it. For that, each method that
// finds the change it asks for made already announces it again (a pin
// that is there, a member that left lately: see memberChangeDoc), and
// CreateGroupChat takes a request id.
var errNotDelivered = connect.NewError(connect.CodeUnavailable,
	errors.New("the change was saved but live delivery failed; retry the call"))

// publishTo announces an event to the users and to extra users.
func (s *Service) publishTo(ctx context.Context, chatID bson.ObjectID, ids []int, ev *parleyv1.Event, extra ...int) error {
	for _, u := range extra {
		if !slices.Contains(ids, u) {
			ids = append(ids, u)
		}
	}
	return s.publishWith(ctx, chatID, ids, ev, nil, nil)
}

// publishWith announces an event to the users, with before's and after's
// Redis commands in the same round trip (see Events.PublishWith).
func (s *Service) publishWith(ctx context.Context, chatID bson.ObjectID, ids []int, ev *parleyv1.Event, before, after func(redis.Pipeliner)) error {
	if err := s.events.PublishWith(ctx, ids, ev, before, after); err != nil {
		s.log.ErrorContext(ctx, "publish event", "chat", chatID.Hex(), "err", err)
		return errNotDelivered
	}
	return nil
}

// publishMessage announces a message event to the chat's participants
// as the caller's access found them (changes to membership complete
// before they answer).
func (s *Service) publishMessage(ctx context.Context, c *chatDoc, kind string, m *parleyv1.Message) error {
	return s.publishMessageWith(ctx, c, kind, m, nil, nil)
}

// publishMessageWith is publishMessage with before's and after's Redis
// commands in the same round trip (see Events.PublishWith).
func (s *Service) publishMessageWith(ctx context.Context, c *chatDoc, kind string, m *parleyv1.Message, before, after func(redis.Pipeliner)) error {
	if s.events == nil {
		return nil
	}
	ev := &parleyv1.Event{}
	e := &parleyv1.MessageEvent{Message: m}
	switch kind {
	case "created":
		ev.Kind = &parleyv1.Event_MessageCreated{MessageCreated: e}
	case "edited":
		ev.Kind = &parleyv1.Event_MessageEdited{MessageEdited: e}
	default:
		ev.Kind = &parleyv1.Event_MessageDeleted{MessageDeleted: e}
	}
	return s.publishWith(ctx, c.ID, audience(c), ev, before, after)
}

// Kinds of chat event.
const (
	chatCreated   = "created"
	chatUpdated   = "updated"
	membersAdded  = "added"
	memberRemoved = "removed"
	roleChanged   = "role"
)

// publishChat announces a change of a chat to its members, and to the
// users named in it (a removed member, say).
func (s *Service) publishChat(ctx context.Context, chatID bson.ObjectID, kind string, actor int, users ...int) error {
	if s.events == nil {
		return nil
	}
	c, err := s.store.getChat(ctx, chatID)
	if errors.Is(err, errNoChat) {
		return nil
	}
	if err != nil {
		return err
	}
	if kind == membersAdded {
		// Only those still members hear of their add: one removed since
		// sees nothing more of the chat.
		users = slices.DeleteFunc(slices.Clone(users), func(u int) bool { return c.participant(u) == nil })
		if len(users) == 0 {
			return nil
		}
	}
	chat := toChat(c, member{}, unreadCounts{})
	chat.Role = parleyv1.Role_ROLE_UNSPECIFIED
	e := &parleyv1.ChatEvent{Chat: chat, ActorId: int32(actor)}
	for _, u := range users {
		e.UserIds = append(e.UserIds, int32(u))
	}
	ev := &parleyv1.Event{}
	switch kind {
	case chatCreated:
		ev.Kind = &parleyv1.Event_ChatCreated{ChatCreated: e}
	case chatUpdated:
		ev.Kind = &parleyv1.Event_ChatUpdated{ChatUpdated: e}
	case membersAdded:
		ev.Kind = &parleyv1.Event_MembersAdded{MembersAdded: e}
	case memberRemoved:
		ev.Kind = &parleyv1.Event_MemberRemoved{MemberRemoved: e}
	default:
		ev.Kind = &parleyv1.Event_RoleChanged{RoleChanged: e}
	}
	// A member who declined a private chat's request hears nothing of it,
	// as of its messages (audience).
	return s.publishTo(ctx, chatID, audience(c), ev, users...)
}

// publishPositions announces a member's positions, with the chat's, to
// the chat's participants as the caller's access found them.
func (s *Service) publishPositions(ctx context.Context, c *chatDoc, userID int) error {
	if s.events == nil {
		return nil
	}
	chatID := c.ID
	// What each member sent as it stands now: c may have been read
	// before a send raised it (or come from the send cache).
	sent, err := s.store.sentSeq(ctx, chatID)
	if err != nil {
		return err
	}
	now := *c
	now.SentSeq = sent
	members, err := s.store.chatMembers(ctx, &now)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(members, func(m member) bool { return m.UserID == userID })
	if i < 0 {
		return nil // gone meanwhile
	}
	all := positionsOf(members)
	ids := make([]int, len(members))
	for j, m := range members {
		ids[j] = m.UserID
	}
	if c.Request != nil {
		// A request's starter sees no ticks: only the member's own
		// devices hear of its positions.
		ids = []int{userID}
		all = positions{}
	}
	ev := &parleyv1.Event{Kind: &parleyv1.Event_PositionsChanged{PositionsChanged: &parleyv1.PositionsChanged{
		ChatId:           chatID.Hex(),
		UserId:           int32(userID),
		DeliveredSeq:     members[i].DeliveredSeq,
		ReadSeq:          members[i].ReadSeq,
		ChatDeliveredSeq: all.delivered,
		ChatReadSeq:      all.read,
	}}}
	// The member's positions as just read, into their mirror (see
	// seqAllocator.queueRaisePositions), and as announced (see mark), in
	// the same round trip.
	announced := s.seqs.announcedKey(chatID, userID)
	after := func(p redis.Pipeliner) {
		s.seqs.queueRaisePositions(ctx, p, chatID, userID, members[i].ReadSeq, members[i].DeliveredSeq)
		p.Set(ctx, announced, announcedPositions(members[i].ReadSeq, members[i].DeliveredSeq), positionsTTL)
	}
	if err := s.publishWith(ctx, chatID, ids, ev, nil, after); err != nil {
		// The record may be set although a log lacks the event: take it
		// back, so that a repeated mark announces the positions again.
		s.seqs.rdb.Del(context.WithoutCancel(ctx), announced)
		return err
	}
	return nil
}

// audience lists the members who hear of what happens in the chat's
// messages: all but one who declined the chat's request, to whom it does
// not exist.
func audience(c *chatDoc) []int {
	return slices.DeleteFunc(participantIDs(c), func(u int) bool { return slices.Contains(c.HiddenFor, u) })
}

// participantIDs lists the chat's members.
func participantIDs(c *chatDoc) []int {
	ids := make([]int, len(c.Participants))
	for i, p := range c.Participants {
		ids[i] = p.UserID
	}
	return ids
}

// SendTyping tells the chat's other members that the caller is typing.
func (s *Service) SendTyping(
	ctx context.Context, req *connect.Request[parleyv1.SendTypingRequest],
) (*connect.Response[parleyv1.SendTypingResponse], error) {
	id, c, _, err := s.access(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	key := fmt.Sprintf("%styping:%d:%s", s.redisPrefix, id.UserID, c.ID.Hex())
	res, err := s.limiter.Allow(ctx, key, typingLimit)
	if err != nil {
		return nil, s.internal(ctx, "send typing", err)
	}
	if res.Allowed == 0 {
		return nil, rpcerr.TooMany("typing", "too many typing indications", res.RetryAfter)
	}
	ids := slices.DeleteFunc(audience(c), func(u int) bool { return u == id.UserID })
	if c.Request != nil && c.Request.StarterID != id.UserID {
		// A request's starter sees no activity of the other member (as
		// no ticks, no presence) until it accepts.
		ids = nil
	}
	if len(ids) > 0 {
		// Nor does a member who blocked the caller, in a group as in a
		// private chat: it is not told, as a send would be (a typing
		// caller does not learn of it).
		blockers, err := s.privacy.BlockersOf(ctx, id.UserID, ids)
		if err != nil {
			return nil, s.internal(ctx, "send typing", err)
		}
		ids = slices.DeleteFunc(ids, func(u int) bool { return slices.Contains(blockers, u) })
	}
	expires := s.now().Add(TypingTTL)
	if !req.Msg.GetTyping() {
		expires = s.now()
	}
	if s.events != nil {
		err = s.events.Notify(ctx, ids, &parleyv1.Event{Kind: &parleyv1.Event_Typing{Typing: &parleyv1.Typing{
			ChatId: c.ID.Hex(), UserId: int32(id.UserID), Typing: req.Msg.GetTyping(), ExpiresAt: timestamppb.New(expires),
		}}})
		if err != nil {
			return nil, s.internal(ctx, "send typing", err)
		}
	}
	return connect.NewResponse(&parleyv1.SendTypingResponse{ExpiresAt: timestamppb.New(expires)}), nil
}
