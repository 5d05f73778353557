package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
)

// Page sizes of ListMessages.
const (
	DefaultMessageLimit = 50
	MaxMessageLimit     = 100
)

var errMessageNotFound = connect.NewError(connect.CodeNotFound, errNoMessage)

// positions are the lowest delivered and read positions over a chat's
// members, from which message statuses follow.
type positions struct{ delivered, read int64 }

func (s *Service) positions(ctx context.Context, c *chatDoc) (positions, error) {
	if c.Request != nil {
		// While a chat is a request its starter sees no read or
		// delivered ticks (every message stays SENT), so that starting
		// a chat with a stranger tells nothing of the stranger's
		// activity.
		return positions{}, nil
	}
	members, err := s.store.chatMembers(ctx, c)
	if err != nil {
		return positions{}, err
	}
	return positionsOf(members), nil
}

func positionsOf(members []member) positions {
	if len(members) == 0 {
		return positions{}
	}
	p := positions{delivered: members[0].DeliveredSeq, read: members[0].ReadSeq}
	for _, m := range members[1:] {
		p.delivered = min(p.delivered, m.DeliveredSeq)
		p.read = min(p.read, m.ReadSeq)
	}
	return p
}

func (p positions) status(seq int64) parleyv1.MessageStatus {
	switch {
	case seq <= p.read:
		return parleyv1.MessageStatus_MESSAGE_STATUS_READ
	case seq <= p.delivered:
		return parleyv1.MessageStatus_MESSAGE_STATUS_DELIVERED
	default:
		return parleyv1.MessageStatus_MESSAGE_STATUS_SENT
	}
}

func toMessage(m *messageDoc, p positions) *parleyv1.Message {
	out := &parleyv1.Message{
		Id:              m.ID.Hex(),
		ChatId:          m.ChatID.Hex(),
		Seq:             m.Seq,
		SenderId:        int32(m.SenderID),
		Text:            m.Text,
		SentAt:          timestamppb.New(m.SentAt),
		Deleted:         m.DeletedAt != nil,
		Status:          p.status(m.Seq),
		ClientMessageId: m.ClientMessageID,
	}
	if m.EditedAt != nil {
		out.EditedAt = timestamppb.New(*m.EditedAt)
	}
	for _, u := range m.Mentions {
		if u == mentionAll {
			out.MentionsAll = true
		} else {
			out.MentionedUserIds = append(out.MentionedUserIds, int32(u))
		}
	}
	if m.DeletedAt == nil {
		// A tombstone keeps nothing of what the message said.
		out.ForwardedFrom = m.ForwardedFrom.toProto()
	}
	for _, a := range m.Attachments {
		out.Attachments = append(out.Attachments, &parleyv1.Attachment{
			Type: a.Type, Url: a.URL, MediaId: a.MediaID.Hex(), FileName: a.FileName, ContentType: a.ContentType,
			Size: a.Size, Width: int32(a.Width), Height: int32(a.Height), ThumbnailUrl: a.Thumbnail,
		})
	}
	return out
}

// SendMessage adds a message to a chat, once per client_message_id.
func (s *Service) SendMessage(
	ctx context.Context, req *connect.Request[parleyv1.SendMessageRequest],
) (*connect.Response[parleyv1.SendMessageResponse], error) {
	id, err := auth.Caller(ctx)
	if err != nil {
		return nil, err
	}
	chatID, err := parseChatID(req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	// The checks read the chat from this instance's cache, valid as long
	// as the seq script finds the version they read (see sendCache); when
	// it does not, they are made again on the chat as it is now, and the
	// last time on the chat read from the store with no version.
	const cachedChecks = 2
	var prev *messageDoc
	c, version, floor, replyTo, err := s.contentChecks(ctx, chatID, id.UserID, req.Msg)
	// Whether c is the chat as the checks passed it (not a refused
	// retry's), whose request the send then accepts (acceptOnSend).
	checked := err == nil
	if err != nil {
		// A reply or a mention that was valid when the message was stored
		// may be no longer (the original deleted, a member gone): a retry
		// of that send still gets the stored message. So does one that
		// the other member of a private chat refuses since (storedRetry).
		if prev, err = s.retryOfRefused(ctx, chatID, id.UserID, req.Msg, err); err != nil {
			if prev, c, err = s.storedRetry(ctx, chatID, id.UserID, req.Msg, nil, err); err != nil {
				return nil, err
			}
		} else {
			bare := proto.CloneOf(req.Msg)
			bare.ReplyToMessageId, bare.MentionUserIds, bare.MentionAll = "", nil, false
			if c, version, floor, err = s.sendChecks(ctx, chatID, id.UserID, bare, true); err != nil {
				if prev, c, err = s.storedRetry(ctx, chatID, id.UserID, req.Msg, prev, err); err != nil {
					return nil, err
				}
			} else {
				checked = true
			}
		}
	}
	mediaIDs := make([]bson.ObjectID, len(req.Msg.GetMediaIds()))
	for i, hex := range req.Msg.GetMediaIds() {
		if mediaIDs[i], err = bson.ObjectIDFromHex(hex); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("media_ids: not a media id"))
		}
	}
	var attachments []attachmentDoc
	if len(mediaIDs) > 0 && s.media == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("uploads are not configured"))
	}
	// The rate limit comes before anything changes, so that a refused
	// send changes nothing. It counts attempts, but never refuses a retry
	// of a send the server already stored: that gets its first answer.
	// (The look-up is made only then: a retry that is not refused finds
	// its message through the seq allocator's mark, see insertMessage.)
	if err := s.allowSend(ctx, id.UserID); err != nil && prev == nil {
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			return nil, err
		}
		var lerr error
		if prev, lerr = s.store.messageByKey(ctx, c.ID, id.UserID, req.Msg.GetClientMessageId()); lerr != nil {
			return nil, s.internal(ctx, "send message", lerr)
		}
		if prev == nil {
			return nil, err
		}
	}
	if len(mediaIDs) > 0 {
		// Claimed first, so that no clean-up deletes them while the
		// message is stored; a retry claims them again under the same key.
		claimed, err := s.media.Claim(ctx, id.UserID, c.ID, req.Msg.GetClientMessageId(), mediaIDs)
		if err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
		for _, a := range claimed {
			attachments = append(attachments, attachmentDoc{
				Type: a.Type, URL: a.URL, MediaID: a.MediaID, FileName: a.FileName, ContentType: a.ContentType,
				Size: a.Size, Width: a.Width, Height: a.Height, Thumbnail: a.ThumbnailURL(),
			})
		}
	}
	text, origin := req.Msg.GetText(), (*forwardDoc)(nil)
	if src := req.Msg.GetForward(); src != nil {
		f, err := s.forward(ctx, id.UserID, c.ID, req.Msg.GetClientMessageId(), src, prev)
		if err != nil {
			return nil, err
		}
		text, attachments, mediaIDs, origin = f.text, f.attachments, f.mediaIDs, f.origin
	}
	if checked {
		if err := s.acceptOnSend(ctx, c, id.UserID); err != nil {
			return nil, err
		}
	}
	m, created := prev, false
	// The lower of the sender's read and delivered positions before this
	// message, as mirrored in Redis: never above MongoDB's (-1: unknown,
	// taken as 0, where positions start).
	var before int64
	for attempt := 1; prev == nil; attempt++ {
		m, created, before, err = s.store.insertMessage(ctx, s.seqs, &messageDoc{
			ChatID:          c.ID,
			SenderID:        id.UserID,
			Text:            text,
			Attachments:     attachments,
			ClientMessageID: req.Msg.GetClientMessageId(),
			ReplyTo:         replyTo,
			Mentions:        mentionsOf(req.Msg),
			ForwardedFrom:   origin,
		}, floor, version)
		if errors.Is(err, errStaleChat) {
			s.forgetChat(c.ID)
			if c, version, floor, err = s.sendChecks(ctx, chatID, id.UserID, req.Msg, attempt < cachedChecks); err != nil {
				if prev, c, err = s.storedRetry(ctx, chatID, id.UserID, req.Msg, nil, err); err != nil {
					return nil, err
				}
				m = prev
			} else if err := s.acceptOnSend(ctx, c, id.UserID); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
		s.sentTo(c.ID, m.Seq)
		break
	}
	// A new message's seq stays in flight (readers stop below it) until
	// its announcement, which releases it in the same round trip, or
	// until this returns.
	inFlight := created
	defer func() {
		if inFlight {
			_ = s.seqs.done(ctx, c.ID, m.Seq)
		}
	}()
	if len(mediaIDs) > 0 {
		// A retry gets the message an earlier attempt stored, with that
		// attempt's files: only those are attached, the others freed.
		var taken, other []bson.ObjectID
		for _, mid := range mediaIDs {
			if slices.ContainsFunc(m.Attachments, func(a attachmentDoc) bool { return a.MediaID == mid }) {
				taken = append(taken, mid)
			} else {
				other = append(other, mid)
			}
		}
		if len(other) > 0 {
			s.media.Release(ctx, other, m.ClientMessageID)
		}
		if err := s.media.Attach(ctx, taken, m.ClientMessageID, m.ID); err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
	}
	// The message is stored and acknowledged from here on; what follows
	// announces it and brings the chat and the sender's positions up to
	// it, and is idempotent, so a retry of the send repairs any part that
	// failed. As sent, nobody else has the message yet: its status is
	// SENT, or READ in a group whose only member is the sender. A retry
	// answers the status the message has now.
	p := positions{}
	if len(c.Participants) == 1 {
		p = positions{delivered: m.Seq, read: m.Seq}
	}
	// Whether the sender's positions are to be announced: when sending
	// read what it had not, or, on a retry, when they are not announced
	// as they stand (the first attempt may have failed before it could).
	announcePositions := false
	if !created {
		// The positions as they stand: the chat as the store holds it
		// (a cached one lags in what its members sent).
		if c, err = s.store.getChat(ctx, c.ID); err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
		if p, err = s.positions(ctx, c); err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
		// A retry: whether the first attempt moved the sender's
		// positions is not known; they are read as they stand.
		me, err := s.store.member(ctx, c, id.UserID)
		if err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
		before = min(me.ReadSeq, me.DeliveredSeq)
		if s.events != nil {
			was, err := s.seqs.rdb.Get(ctx, s.seqs.announcedKey(c.ID, id.UserID)).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return nil, s.internal(ctx, "send message", err)
			}
			announcePositions = was != announcedPositions(me.ReadSeq, me.DeliveredSeq)
		}
	}
	msg, err := s.renderMessage(ctx, c, id.UserID, p, m)
	if err != nil {
		return nil, s.internal(ctx, "send message", err)
	}
	// The sender has its message before anyone else hears of it: a
	// recipient that marks it delivered on its event then moves the
	// chat's position, which the sender's own would hold back otherwise.
	// With them, the chat's lastMessage, in the same command.
	if err := s.store.sent(ctx, m); err != nil {
		return nil, s.internal(ctx, "send message", err)
	}
	if inFlight, err = s.announceSend(ctx, c, msg, created); err != nil {
		return nil, s.internal(ctx, "send message", err)
	}
	if announcePositions || max(before, 0) < m.Seq-1 {
		// Sending read what the sender had not (or may have): others'
		// ticks move.
		if err := s.publishPositions(ctx, c, id.UserID); err != nil {
			return nil, s.internal(ctx, "send message", err)
		}
	}
	return connect.NewResponse(&parleyv1.SendMessageResponse{Message: msg}), nil
}

// sendChecks checks that the sender may send to the chat: it is a member,
// and in a private chat the other member did not decline it nor block
// the sender. It returns the chat as checked, the version it was read at
// (see sendCache), from the cache when cached, else from the store ("":
// no version), and the floor of the seq to take (see tryInsert). Only a
// chat read from the store refuses a send or answers a request made to
// the sender (which acceptOnSend then accepts, once the send's other
// checks passed): a cached entry that would do either may be stale, and
// the checks are made again on the store's.
func (s *Service) sendChecks(ctx context.Context, chatID bson.ObjectID, sender int, msg *parleyv1.SendMessageRequest, cached bool) (*chatDoc, string, int64, error) {
	mode := uncached
	if cached {
		mode = fromCache
	}
	e, hit, err := s.sendView(ctx, chatID, mode)
	if err != nil {
		return nil, "", 0, s.internal(ctx, "send message", err)
	}
	c, version, err := s.checkSend(ctx, e, sender, msg, hit)
	if err != nil && hit {
		s.forgetChat(chatID)
		if e, _, err = s.sendView(ctx, chatID, fromStore); err != nil {
			return nil, "", 0, s.internal(ctx, "send message", err)
		}
		c, version, err = s.checkSend(ctx, e, sender, msg, false)
	}
	if err != nil {
		return nil, "", 0, err
	}
	return c, version, e.floor.Load(), nil
}

// contentChecks makes sendChecks' checks, and those of the reply.
func (s *Service) contentChecks(ctx context.Context, chatID bson.ObjectID, sender int, msg *parleyv1.SendMessageRequest) (*chatDoc, string, int64, *replyDoc, error) {
	c, version, floor, err := s.sendChecks(ctx, chatID, sender, msg, true)
	if err != nil {
		return nil, "", 0, nil, err
	}
	replyTo, err := s.replyTo(ctx, c.ID, msg.GetReplyToMessageId())
	if err != nil {
		return nil, "", 0, nil, err
	}
	return c, version, floor, replyTo, nil
}

// storedRetry returns the message stored by an earlier attempt at a send
// that the checks now refuse PERMISSION_DENIED (refusal): the other member
// of the private chat blocked the sender, or declined its request, since.
// The retry completes the send (announces what the first attempt may not
// have) and gets the message, as any retry does, with the chat as the
// store holds it. It returns the refusal when no attempt stored the
// message, and NOT_FOUND when the sender is no member of the chat. prev
// is the stored message when the caller found it already (nil: looked
// up here).
func (s *Service) storedRetry(ctx context.Context, chatID bson.ObjectID, sender int, msg *parleyv1.SendMessageRequest, prev *messageDoc, refusal error) (*messageDoc, *chatDoc, error) {
	if connect.CodeOf(refusal) != connect.CodePermissionDenied {
		return nil, nil, refusal
	}
	if prev == nil {
		var err error
		if prev, err = s.store.messageByKey(ctx, chatID, sender, msg.GetClientMessageId()); err != nil {
			return nil, nil, s.internal(ctx, "send message", err)
		}
	}
	if prev == nil {
		return nil, nil, refusal
	}
	c, err := s.store.getChat(ctx, chatID)
	if err != nil {
		return nil, nil, s.internal(ctx, "send message", err)
	}
	if c.participant(sender) == nil {
		return nil, nil, errNotFound
	}
	return prev, c, nil
}

// retryOfRefused returns the message stored by an earlier attempt at a
// send with a reply or mentions that the checks now refuse (refusal), or
// the refusal when there is none.
func (s *Service) retryOfRefused(ctx context.Context, chatID bson.ObjectID, sender int, msg *parleyv1.SendMessageRequest, refusal error) (*messageDoc, error) {
	if msg.GetReplyToMessageId() == "" && len(msg.GetMentionUserIds()) == 0 && !msg.GetMentionAll() {
		return nil, refusal
	}
	switch connect.CodeOf(refusal) {
	case connect.CodeInvalidArgument, connect.CodePermissionDenied, connect.CodeNotFound, connect.CodeFailedPrecondition:
	default:
		return nil, refusal
	}
	prev, err := s.store.messageByKey(ctx, chatID, sender, msg.GetClientMessageId())
	if err != nil {
		return nil, s.internal(ctx, "send message", err)
	}
	if prev == nil {
		return nil, refusal
	}
	return prev, nil
}

// checkMentions checks the message's mentions against the chat: only its
// members may be mentioned, and everyone (@all) only in a group, by an
// admin.
func checkMentions(c *chatDoc, sender *member, msg *parleyv1.SendMessageRequest) error {
	for _, u := range msg.GetMentionUserIds() {
		if c.participant(int(u)) == nil {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("mention_user_ids: user %d is not a member of the chat", u))
		}
	}
	if !msg.GetMentionAll() {
		return nil
	}
	if c.Type != typeGroup {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("mention_all: only in groups"))
	}
	if sender.Role != roleAdmin {
		return connect.NewError(connect.CodePermissionDenied, errors.New("only the group's admins may mention everyone"))
	}
	return nil
}

// mentionsOf is what a message stores of the request's mentions.
func mentionsOf(msg *parleyv1.SendMessageRequest) []int {
	var out []int
	if msg.GetMentionAll() {
		out = append(out, mentionAll)
	}
	for _, u := range msg.GetMentionUserIds() {
		out = append(out, int(u))
	}
	return out
}

// replyTo returns what a reply keeps of the message of the chat that it
// answers (nil when hex is empty: no reply). The original must be there,
// and not deleted.
func (s *Service) replyTo(ctx context.Context, chatID bson.ObjectID, hex string) (*replyDoc, error) {
	if hex == "" {
		return nil, nil
	}
	id, err := bson.ObjectIDFromHex(hex)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("reply_to_message_id: not a message id"))
	}
	o, err := s.store.getMessage(ctx, chatID, id)
	if errors.Is(err, errNoMessage) {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("reply_to_message_id: no such message in this chat"))
	}
	if err != nil {
		return nil, s.internal(ctx, "send message", err)
	}
	if o.DeletedAt != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("reply_to_message_id: the message was deleted"))
	}
	return &replyDoc{MessageID: o.ID, Seq: o.Seq, SenderID: o.SenderID}, nil
}

// errRecheck tells sendChecks that a cached entry would accept a request.
var errRecheck = errors.New("check again on the store's chat")

// checkSend makes sendChecks' checks on the chat of e (hit: from the
// cache).
func (s *Service) checkSend(ctx context.Context, e *sendEntry, sender int, msg *parleyv1.SendMessageRequest, hit bool) (*chatDoc, string, error) {
	// A copy: accepting a request changes it, and the entry is shared.
	c := *e.chat
	me, err := memberOf(&c, sender)
	if err != nil {
		return nil, "", s.internal(ctx, "send message", err)
	}
	if err := checkMentions(&c, me, msg); err != nil {
		return nil, "", err
	}
	if c.Type != typePrivate {
		return &c, e.version, nil
	}
	if c.declined() {
		return nil, "", errRefused
	}
	blocked, err := s.blockedBy(ctx, e, sender)
	if err != nil {
		return nil, "", s.internal(ctx, "send message", err)
	}
	if blocked {
		return nil, "", errRefused
	}
	// A reply accepts a request; an acceptance whose announcement
	// failed is announced by the next send.
	if c.answeredBy(sender) {
		if hit {
			return nil, "", errRecheck
		}
		// Accepting changes the chat (and sets its version), but only
		// once the send's other checks passed (acceptOnSend): the send
		// goes on with the chat as checked, unversioned.
		return &c, "", nil
	}
	return &c, e.version, nil
}

// acceptOnSend accepts the request of a private chat that the sender's
// send answers, if it does (see checkSend), once the send's checks have
// all passed: a send refused for its reply, its rate, its files or what
// it forwards leaves the request as it was. c is the chat as sendChecks
// returned it.
func (s *Service) acceptOnSend(ctx context.Context, c *chatDoc, sender int) error {
	if c.Type != typePrivate || c.declined() || !c.answeredBy(sender) {
		return nil
	}
	if err := s.accept(ctx, c, sender); err != nil {
		return err
	}
	s.forgetChat(c.ID)
	return nil
}

// ListMessages returns a page of a chat's messages in seq order.
func (s *Service) ListMessages(
	ctx context.Context, req *connect.Request[parleyv1.ListMessagesRequest],
) (*connect.Response[parleyv1.ListMessagesResponse], error) {
	_, c, me, err := s.access(ctx, req.Msg.GetChatId())
	if err != nil {
		return nil, err
	}
	limit := int(req.Msg.GetLimit())
	if limit == 0 {
		limit = DefaultMessageLimit
	}
	var before, after *int64
	switch cur := req.Msg.GetCursor().(type) {
	case *parleyv1.ListMessagesRequest_BeforeSeq:
		before = &cur.BeforeSeq
	case *parleyv1.ListMessagesRequest_AfterSeq:
		after = &cur.AfterSeq
	}
	// Stop below any message still being written, so that paging forward
	// by seq never steps over one that commits late.
	var upTo *int64
	if wm, ok, err := s.seqs.stable(ctx, c.ID); err != nil {
		return nil, s.internal(ctx, "list messages", err)
	} else if ok {
		upTo = &wm
	}
	// A page the caller hid whole would leave it no seq to page on from:
	// read on, a few pages at most, until one shows something.
	var msgs []messageDoc
	var more bool
	var end int64 // where the read stopped (see page_end_seq)
	for range 8 {
		raw, m, err := s.store.listMessages(ctx, c.ID, before, after, upTo, lastSeq(c), limit)
		if err != nil {
			return nil, s.internal(ctx, "list messages", err)
		}
		more = m
		if len(raw) == 0 {
			break
		}
		first, last := raw[0].Seq, raw[len(raw)-1].Seq
		if end = first; after != nil {
			end = last
		}
		if msgs, err = s.store.withoutHidden(ctx, c.ID, me.UserID, raw); err != nil {
			return nil, s.internal(ctx, "list messages", err)
		}
		if len(msgs) > 0 || !more {
			break
		}
		if after != nil {
			after = &last
		} else {
			before = &first
		}
	}
	p, err := s.positions(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "list messages", err)
	}
	out, err := s.renderMessages(ctx, c, me.UserID, p, msgs)
	if err != nil {
		return nil, s.internal(ctx, "list messages", err)
	}
	return connect.NewResponse(&parleyv1.ListMessagesResponse{Messages: out, HasMore: more, PageEndSeq: end}), nil
}

// message loads a message of a chat the caller may see.
func (s *Service) message(ctx context.Context, chatHex, messageHex string) (*chatDoc, *member, *messageDoc, error) {
	_, c, m, err := s.access(ctx, chatHex)
	if err != nil {
		return nil, nil, nil, err
	}
	msgID, err := bson.ObjectIDFromHex(messageHex)
	if err != nil {
		return nil, nil, nil, connect.NewError(connect.CodeInvalidArgument, errors.New("message_id: not a message id"))
	}
	msg, err := s.store.getMessage(ctx, c.ID, msgID)
	if errors.Is(err, errNoMessage) {
		return nil, nil, nil, errMessageNotFound
	}
	if err != nil {
		return nil, nil, nil, s.internal(ctx, "get message", err)
	}
	return c, m, msg, nil
}

// EditMessage replaces the text of the caller's message.
func (s *Service) EditMessage(
	ctx context.Context, req *connect.Request[parleyv1.EditMessageRequest],
) (*connect.Response[parleyv1.EditMessageResponse], error) {
	return withMessageLock(ctx, s, req.Msg.GetMessageId(), "edit message", func() (*connect.Response[parleyv1.EditMessageResponse], error) {
		return s.editMessage(ctx, req)
	})
}

// withMessageLock runs fn holding the lock of the message (see
// Service.messageLocks), and maps its error (what names the call).
func withMessageLock[T any](ctx context.Context, s *Service, messageID, what string, fn func() (T, error)) (T, error) {
	var res T
	err := s.messageLocks.Do(ctx, messageID, func() (err error) {
		res, err = fn()
		return err
	})
	if err != nil {
		var zero T
		return zero, s.internal(ctx, what, err)
	}
	return res, nil
}

// editMessage is EditMessage, holding the message's lock.
func (s *Service) editMessage(
	ctx context.Context, req *connect.Request[parleyv1.EditMessageRequest],
) (*connect.Response[parleyv1.EditMessageResponse], error) {
	c, me, msg, err := s.message(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	if msg.SenderID != me.UserID {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only the sender may edit a message"))
	}
	if msg.DeletedAt != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the message was deleted"))
	}
	if msg.ForwardedFrom != nil {
		// Its text would go on showing as its origin's.
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("a forwarded message cannot be edited"))
	}
	if err := s.mayActInPrivate(ctx, c, me.UserID); err != nil {
		return nil, s.internal(ctx, "edit message", err)
	}
	if err := s.store.editMessage(ctx, msg, req.Msg.GetText()); errors.Is(err, errNoMessage) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the message was deleted"))
	} else if err != nil {
		return nil, s.internal(ctx, "edit message", err)
	}
	p, err := s.positions(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "edit message", err)
	}
	ev, err := s.renderMessage(ctx, c, forEvent, p, msg)
	if err != nil {
		return nil, s.internal(ctx, "edit message", err)
	}
	if err := s.publishMessage(ctx, c, "edited", ev); err != nil {
		return nil, s.internal(ctx, "edit message", err)
	}
	out, err := s.renderMessage(ctx, c, me.UserID, p, msg)
	if err != nil {
		return nil, s.internal(ctx, "edit message", err)
	}
	return connect.NewResponse(&parleyv1.EditMessageResponse{Message: out}), nil
}

// DeleteMessage deletes a message for everyone, leaving a tombstone.
func (s *Service) DeleteMessage(
	ctx context.Context, req *connect.Request[parleyv1.DeleteMessageRequest],
) (*connect.Response[parleyv1.DeleteMessageResponse], error) {
	return withMessageLock(ctx, s, req.Msg.GetMessageId(), "delete message", func() (*connect.Response[parleyv1.DeleteMessageResponse], error) {
		return s.deleteMessage(ctx, req)
	})
}

// deleteMessage is DeleteMessage, holding the message's lock.
func (s *Service) deleteMessage(
	ctx context.Context, req *connect.Request[parleyv1.DeleteMessageRequest],
) (*connect.Response[parleyv1.DeleteMessageResponse], error) {
	c, me, msg, err := s.message(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	if msg.SenderID != me.UserID && !(c.Type == typeGroup && me.Role == roleAdmin) {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only the sender or a group admin may delete a message"))
	}
	deleted := msg.DeletedAt == nil
	// The files go too: those of a message that had any, and, on a retry
	// (the attachments are gone from a deleted message), whatever the
	// media still records for it.
	withFiles := len(msg.Attachments) > 0 || !deleted
	if deleted {
		if err := s.store.deleteMessage(ctx, msg); err != nil {
			return nil, s.internal(ctx, "delete message", err)
		}
	}
	// The files at once, before what may fail: a call that fails after
	// this and is never retried leaves no file of a deleted message that
	// its members could still download.
	if s.media != nil && withFiles {
		if err := s.media.DeleteOfMessage(ctx, msg.ID); err != nil {
			return nil, s.internal(ctx, "delete message", err)
		}
	}
	if err := s.unpinDeleted(ctx, c, me.UserID, msg); err != nil {
		return nil, err
	}
	if err := s.store.dropReactions(ctx, msg); err != nil {
		return nil, s.internal(ctx, "delete message", err)
	}
	p, err := s.positions(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "delete message", err)
	}
	out, err := s.renderMessage(ctx, c, forEvent, p, msg)
	if err != nil {
		return nil, s.internal(ctx, "delete message", err)
	}
	// Announced on a retry too: the call that deleted it may have failed
	// to (errNotDelivered).
	if err := s.publishMessage(ctx, c, "deleted", out); err != nil {
		return nil, s.internal(ctx, "delete message", err)
	}
	return connect.NewResponse(&parleyv1.DeleteMessageResponse{Message: out}), nil
}

// mark moves the caller's positions forward to upTo, clamped to the
// chat's messages: not past a message still being written (it would be
// born read), nor past the last one. A message whose event went out is
// written, so a client may mark up to any seq it received live.
func (s *Service) mark(ctx context.Context, chatHex string, upTo int64, kinds ...string) (*chatDoc, *member, error) {
	id, c, before, err := s.access(ctx, chatHex)
	if err != nil {
		return nil, nil, err
	}
	wm, ok, err := s.seqs.stable(ctx, c.ID)
	if err != nil {
		return nil, nil, s.internal(ctx, "mark", err)
	}
	if !ok {
		// Redis lost the counter: the store knows the last message.
		if wm, err = s.store.maxSeqFrom(ctx, c.ID, lastSeq(c)); err != nil {
			return nil, nil, s.internal(ctx, "mark", err)
		}
	}
	upTo = min(upTo, wm)
	for _, kind := range kinds {
		if err := s.store.raisePosition(ctx, c.ID, id.UserID, kind, upTo); err != nil {
			return nil, nil, s.internal(ctx, "mark", err)
		}
	}
	m, err := s.store.member(ctx, c, id.UserID)
	if err != nil {
		return nil, nil, s.internal(ctx, "mark", err)
	}
	// A mark that finds the position it asks for already there, but not
	// announced as it is, announces it: it is the retry of a mark whose
	// announcement failed (errNotDelivered). Another device's repeat, of
	// positions announced, costs one Redis read.
	publish := m.ReadSeq != before.ReadSeq || m.DeliveredSeq != before.DeliveredSeq
	there := m.DeliveredSeq
	if slices.Contains(kinds, kindRead) {
		there = m.ReadSeq
	}
	if !publish && upTo > 0 && there == upTo && s.events != nil {
		was, err := s.seqs.rdb.Get(ctx, s.seqs.announcedKey(c.ID, id.UserID)).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, nil, s.internal(ctx, "mark", err)
		}
		publish = was != announcedPositions(m.ReadSeq, m.DeliveredSeq)
	}
	if publish {
		if err := s.publishPositions(ctx, c, id.UserID); err != nil {
			return nil, nil, s.internal(ctx, "mark", err)
		}
	}
	return c, m, nil
}

// MarkDelivered moves the caller's delivered position forward.
func (s *Service) MarkDelivered(
	ctx context.Context, req *connect.Request[parleyv1.MarkDeliveredRequest],
) (*connect.Response[parleyv1.MarkDeliveredResponse], error) {
	_, m, err := s.mark(ctx, req.Msg.GetChatId(), req.Msg.GetUpToSeq(), kindDelivered)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&parleyv1.MarkDeliveredResponse{DeliveredSeq: m.DeliveredSeq}), nil
}

// MarkRead moves the caller's read (and delivered) position forward.
func (s *Service) MarkRead(
	ctx context.Context, req *connect.Request[parleyv1.MarkReadRequest],
) (*connect.Response[parleyv1.MarkReadResponse], error) {
	c, m, err := s.mark(ctx, req.Msg.GetChatId(), req.Msg.GetUpToSeq(), kindDelivered, kindRead)
	if err != nil {
		return nil, err
	}
	unread, err := s.store.unread(ctx, c, *m)
	if err != nil {
		return nil, s.internal(ctx, "mark read", err)
	}
	return connect.NewResponse(&parleyv1.MarkReadResponse{ReadSeq: m.ReadSeq, UnreadCount: unread}), nil
}

// announceSend publishes a new message once: a retry of a send whose
// announcement went out (and whose reply was lost, or which failed
// later) does not announce it again. Two retries racing can still both
// announce it; clients keep one message per seq. A new message's seq
// leaves the in-flight set in the same round trip, ahead of the event,
// so that a message whose event went out is below the readers'
// watermark; it reports whether the seq is still in flight.
func (s *Service) announceSend(ctx context.Context, c *chatDoc, msg *parleyv1.Message, created bool) (inFlight bool, err error) {
	if s.events == nil {
		return created, nil
	}
	key := s.redisPrefix + "announced:" + msg.GetId()
	if !created {
		n, err := s.seqs.rdb.Exists(ctx, key).Result()
		if err != nil {
			return false, err
		}
		if n > 0 {
			return false, nil
		}
	}
	var release func(redis.Pipeliner)
	if created {
		// The seq leaves the in-flight set, and the sender's positions,
		// which MongoDB has raised to the message, are mirrored.
		release = func(p redis.Pipeliner) {
			s.seqs.queueDone(ctx, p, c.ID, msg.GetSeq())
			s.seqs.queueRaisePositions(ctx, p, c.ID, int(msg.GetSenderId()), msg.GetSeq(), msg.GetSeq())
		}
	}
	mark := func(p redis.Pipeliner) { p.Set(ctx, key, 1, 24*time.Hour) }
	if err := s.publishMessageWith(ctx, c, "created", msg, release, mark); err != nil {
		// The mark may be set although a log lacks the event: take it
		// back, so that a retry announces the message again.
		s.seqs.rdb.Del(context.WithoutCancel(ctx), key)
		return created, err
	}
	return false, nil
}
