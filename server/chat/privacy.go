package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
)

// Privacy is what chats need of users' blocks and privacy settings;
// user.Service implements it.
type Privacy interface {
	// Settings returns the privacy settings of each of the users (the
	// defaults for a user without any).
	Settings(ctx context.Context, userIDs []int) (map[int]*parleyv1.PrivacySettings, error)
	// BlockersOf returns those of among who blocked userID: one indexed
	// read.
	BlockersOf(ctx context.Context, userID int, among []int) ([]int, error)
	// Blocks returns the users userID blocked.
	Blocks(ctx context.Context, userID int) ([]int, error)
	// Block records that blocker blocked userID.
	Block(ctx context.Context, blocker, userID int) error
}

// noPrivacy is the Privacy of a service built without one: default
// settings, no blocks.
type noPrivacy struct{}

func (noPrivacy) Settings(context.Context, []int) (map[int]*parleyv1.PrivacySettings, error) {
	return map[int]*parleyv1.PrivacySettings{}, nil
}
func (noPrivacy) BlockersOf(context.Context, int, []int) ([]int, error) { return nil, nil }
func (noPrivacy) Blocks(context.Context, int) ([]int, error)            { return nil, nil }
func (noPrivacy) Block(context.Context, int, int) error {
	return errors.New("blocks are not configured")
}

// errRefused answers a private chat or a send that the other user does
// not accept, whatever the reason: its settings, a declined request, or a
// block, which the answer must not tell from the others.
var errRefused = connect.NewError(connect.CodePermissionDenied, errors.New("this user does not accept messages from you"))

// mayActInPrivate checks that the other member of a private chat still
// accepts what the caller does there that it would hear of (a reaction,
// an edit, a pin), as for a message: not when it blocked the caller or
// declined the chat's request. In a group it accepts everything.
func (s *Service) mayActInPrivate(ctx context.Context, c *chatDoc, caller int) error {
	if c.Type != typePrivate {
		return nil
	}
	if c.declined() {
		return errRefused
	}
	blocked, err := s.blocksCaller(ctx, c, caller)
	if err != nil {
		return err
	}
	if blocked {
		return errRefused
	}
	return nil
}

// blocksCaller reports whether the other member of a private chat
// blocked the caller.
func (s *Service) blocksCaller(ctx context.Context, c *chatDoc, caller int) (bool, error) {
	peer := c.peer(caller)
	if c.Type != typePrivate || peer == 0 {
		return false, nil
	}
	blockers, err := s.privacy.BlockersOf(ctx, caller, []int{peer})
	return len(blockers) > 0, err
}

// mayStartPrivate checks that peer lets the caller start a private chat
// with it.
func (s *Service) mayStartPrivate(ctx context.Context, caller, peer int) error {
	blockers, err := s.privacy.BlockersOf(ctx, caller, []int{peer})
	if err != nil {
		return err
	}
	if len(blockers) > 0 {
		return errRefused
	}
	settings, err := s.privacy.Settings(ctx, []int{peer})
	if err != nil {
		return err
	}
	switch settings[peer].GetPrivateChats() {
	case parleyv1.PrivateChats_PRIVATE_CHATS_NOBODY:
		return errRefused
	case parleyv1.PrivateChats_PRIVATE_CHATS_GROUPS:
		ok, err := s.store.shareGroup(ctx, caller, peer)
		if err != nil {
			return err
		}
		if !ok {
			return errRefused
		}
	}
	return nil
}

// mayAdd splits users into those the actor may add to a group and those
// whose settings (or block of the actor) refuse it. It costs two indexed
// PostgreSQL reads, and one MongoDB read when some users accept only
// users they chatted with.
func (s *Service) mayAdd(ctx context.Context, actor int, users []int) (allowed, refused []int, err error) {
	if len(users) == 0 {
		return nil, nil, nil
	}
	blockers, err := s.privacy.BlockersOf(ctx, actor, users)
	if err != nil {
		return nil, nil, err
	}
	settings, err := s.privacy.Settings(ctx, users)
	if err != nil {
		return nil, nil, err
	}
	var chattedOnly []int
	for _, u := range users {
		if settings[u].GetGroupAdds() == parleyv1.GroupAdds_GROUP_ADDS_CHATTED {
			chattedOnly = append(chattedOnly, u)
		}
	}
	chatted, err := s.store.chattedWith(ctx, actor, chattedOnly)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range users {
		ok := !slices.Contains(blockers, u)
		switch settings[u].GetGroupAdds() {
		case parleyv1.GroupAdds_GROUP_ADDS_NOBODY:
			ok = false
		case parleyv1.GroupAdds_GROUP_ADDS_CHATTED:
			ok = ok && chatted[u]
		}
		if ok {
			allowed = append(allowed, u)
		} else {
			refused = append(refused, u)
		}
	}
	return allowed, refused, nil
}

func toInt32s(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, u := range ids {
		out[i] = int32(u)
	}
	return out
}

// accept makes the request an accepted chat and tells both members,
// also when it was accepted already. The acceptance stays marked on the
// chat (acceptedBy) until both announcements are out, so that a retry
// (or the next send) announces it when this call failed to.
func (s *Service) accept(ctx context.Context, c *chatDoc, actor int) error {
	if c.Request != nil || len(c.HiddenFor) > 0 {
		if err := s.store.acceptRequest(ctx, c.ID, actor); err != nil {
			return s.internal(ctx, "accept request", err)
		}
		c.Request, c.HiddenFor, c.AcceptedBy = nil, nil, actor
	}
	by := actor
	if c.AcceptedBy != 0 {
		by = c.AcceptedBy
	}
	if err := s.publishChat(ctx, c.ID, chatUpdated, by); err != nil {
		return s.internal(ctx, "accept request", err)
	}
	// The starter's ticks catch up with what the recipient received and
	// read during the request, which it was not told of.
	if err := s.publishPositions(ctx, c, by); err != nil {
		return s.internal(ctx, "accept request", err)
	}
	if c.AcceptedBy != 0 {
		if err := s.store.acceptAnnounced(ctx, c.ID); err != nil {
			// The next send announces it again.
			s.log.WarnContext(ctx, "record an acceptance announced", "chat", c.ID.Hex(), "err", err)
		}
		c.AcceptedBy = 0
	}
	return nil
}

// requestAccess is access for the recipient of a request, which also
// finds a request the caller declined (hidden from access).
func (s *Service) requestAccess(ctx context.Context, chatHex string) (auth.Identity, *chatDoc, error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return id, nil, err
	}
	chatID, err := parseChatID(chatHex)
	if err != nil {
		return id, nil, err
	}
	c, err := s.store.getChat(ctx, chatID)
	if err != nil {
		return id, nil, s.internal(ctx, "chat request", err)
	}
	if c.participant(id.UserID) == nil {
		return id, nil, errNotFound
	}
	return id, c, nil
}

var errOwnRequest = connect.NewError(connect.CodeFailedPrecondition, errors.New("the request is the caller's own: the other member accepts or declines it"))

// AcceptChatRequest accepts a private chat request made to the caller.
func (s *Service) AcceptChatRequest(
	ctx context.Context, req *connect.Request[parleyv1.AcceptChatRequestRequest],
) (*connect.Response[parleyv1.AcceptChatRequestResponse], error) {
	id, c, err := s.requestAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	if c.Request != nil && c.Request.StarterID == id.UserID {
		return nil, errOwnRequest
	}
	// An accepted private chat is announced again: the call that
	// accepted it may have failed to (errNotDelivered).
	if c.Type == typePrivate {
		if err := s.accept(ctx, c, id.UserID); err != nil {
			return nil, err
		}
	}
	chat, err := s.view(ctx, c.ID, id.UserID)
	if err != nil {
		return nil, s.internal(ctx, "accept request", err)
	}
	return connect.NewResponse(&parleyv1.AcceptChatRequestResponse{Chat: chat}), nil
}

// DeclineChatRequest hides a request from the caller, who declined it,
// and refuses the starter's further sends; optionally blocks the starter.
func (s *Service) DeclineChatRequest(
	ctx context.Context, req *connect.Request[parleyv1.DeclineChatRequestRequest],
) (*connect.Response[parleyv1.DeclineChatRequestResponse], error) {
	id, c, err := s.requestAccess(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	switch {
	case c.Request == nil:
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the chat is no request"))
	case c.Request.StarterID == id.UserID:
		return nil, errOwnRequest
	}
	if req.Msg.GetBlock() {
		if err := s.privacy.Block(ctx, id.UserID, c.Request.StarterID); err != nil {
			return nil, s.internal(ctx, "decline request", err)
		}
	}
	if err := s.store.declineRequest(ctx, c.ID, id.UserID); err != nil {
		return nil, s.internal(ctx, "decline request", err)
	}
	if s.events != nil {
		// Only the decliner hears of it: its other devices drop the chat.
		chat := toChat(c, member{}, unreadCounts{})
		ev := &parleyv1.Event{Kind: &parleyv1.Event_MemberRemoved{MemberRemoved: &parleyv1.ChatEvent{
			Chat: chat, ActorId: int32(id.UserID), UserIds: []int32{int32(id.UserID)},
		}}}
		if err := s.publishTo(ctx, c.ID, []int{id.UserID}, ev); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&parleyv1.DeclineChatRequestResponse{}), nil
}

// sharesPresence reports whether the chat lets its members see each
// other's presence: a group does, a private chat once it is no request.
func sharesPresence(c *chatDoc) bool {
	return c.Type == typeGroup || c.Request == nil
}

// presencePeers returns the users with whom the user shares a chat that
// shares presence.
func (s *Service) presencePeers(ctx context.Context, userID int) ([]int, error) {
	chats, err := s.store.chatsOf(ctx, userID)
	if err != nil {
		return nil, err
	}
	seen := map[int]bool{userID: true}
	var out []int
	for _, c := range chats {
		if !sharesPresence(&c) {
			continue
		}
		for _, p := range c.Participants {
			if !seen[p.UserID] {
				seen[p.UserID] = true
				out = append(out, p.UserID)
			}
		}
	}
	return out, nil
}

// Contacts returns the users who may see the user's presence: those who
// share a group with it, or a private chat that is no request, and whom
// it did not block.
func (s *Service) Contacts(ctx context.Context, userID int) ([]int, error) {
	peers, err := s.presencePeers(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("contacts: %w", err)
	}
	if len(peers) == 0 {
		return nil, nil
	}
	blocked, err := s.privacy.Blocks(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("contacts: %w", err)
	}
	return slices.DeleteFunc(peers, func(u int) bool { return slices.Contains(blocked, u) }), nil
}

// Sharing returns those of others whose presence the user may see (those
// whose Contacts include the user).
func (s *Service) Sharing(ctx context.Context, userID int, others []int) ([]int, error) {
	if len(others) == 0 {
		return nil, nil
	}
	peers, err := s.presencePeers(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("sharing: %w", err)
	}
	visible := slices.DeleteFunc(slices.Clone(others), func(u int) bool { return !slices.Contains(peers, u) })
	if len(visible) == 0 {
		return nil, nil
	}
	blockers, err := s.privacy.BlockersOf(ctx, userID, visible)
	if err != nil {
		return nil, fmt.Errorf("sharing: %w", err)
	}
	return slices.DeleteFunc(visible, func(u int) bool { return slices.Contains(blockers, u) }), nil
}

// LastSeenHidden returns those of the users who hide their last-seen
// time from others.
func (s *Service) LastSeenHidden(ctx context.Context, userIDs []int) ([]int, error) {
	if len(userIDs) == 0 {
		return nil, nil
	}
	settings, err := s.privacy.Settings(ctx, userIDs)
	if err != nil {
		return nil, fmt.Errorf("last seen: %w", err)
	}
	var out []int
	for _, u := range userIDs {
		if settings[u].GetHideLastSeen() {
			out = append(out, u)
		}
	}
	return out, nil
}
