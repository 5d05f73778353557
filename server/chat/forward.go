package chat

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/media"
)

// forwardDoc is the origin of a forwarded message: the sender and time of
// the first message of the chain, which a message forwarded again keeps.
type forwardDoc struct {
	SenderID int       `bson:"senderId"`
	SentAt   time.Time `bson:"sentAt"`
}

// toProto is the origin as clients see it; nil for a message that is not
// a forward.
func (f *forwardDoc) toProto() *parleyv1.ForwardedFrom {
	if f == nil {
		return nil
	}
	return &parleyv1.ForwardedFrom{SenderId: int32(f.SenderID), SentAt: timestamppb.New(f.SentAt)}
}

var (
	// errNoSource is one answer for a source chat the caller is not in
	// and for a message its chat does not have, so that a forward tells
	// nothing of other people's chats.
	errNoSource = connect.NewError(connect.CodeNotFound, errors.New("no such message to forward"))
	errDeleted  = connect.NewError(connect.CodeFailedPrecondition, errors.New("the message was deleted"))
	errNothing  = connect.NewError(connect.CodeFailedPrecondition, errors.New("the message has nothing left to forward: its files are gone"))
)

// forwarded is what a forward puts in its message.
type forwarded struct {
	text        string
	attachments []attachmentDoc
	// mediaIDs are the files' copies, claimed for the message.
	mediaIDs []bson.ObjectID
	origin   *forwardDoc
}

// forward reads the message that src names, which sender must be able to
// see (a member of its chat), and returns what sender's send into chatID
// under key (its client_message_id) stores of it: its text, copies of its
// files in chatID (media.Library.Forward: no new upload), and its origin.
// prev is the message an earlier attempt at the send stored, when known;
// it is looked up otherwise. A retry gets that message's content,
// whatever became of the source since, and makes no copies.
func (s *Service) forward(ctx context.Context, sender int, chatID bson.ObjectID, key string, src *parleyv1.ForwardSource, prev *messageDoc) (*forwarded, error) {
	var err error
	if prev == nil {
		if prev, err = s.store.messageByKey(ctx, chatID, sender, key); err != nil {
			return nil, s.internal(ctx, "forward message", err)
		}
	}
	if prev != nil {
		f := &forwarded{text: prev.Text, attachments: prev.Attachments, origin: prev.ForwardedFrom}
		for _, a := range prev.Attachments {
			f.mediaIDs = append(f.mediaIDs, a.MediaID)
		}
		return f, nil
	}
	m, err := s.forwardSource(ctx, sender, src)
	if err != nil {
		return nil, err
	}
	f := &forwarded{text: m.Text, origin: m.ForwardedFrom}
	if f.origin == nil {
		f.origin = &forwardDoc{SenderID: m.SenderID, SentAt: m.SentAt}
	}
	if len(m.Attachments) > 0 {
		if s.media == nil {
			return nil, connect.NewError(connect.CodeUnimplemented, errors.New("uploads are not configured"))
		}
		ids := make([]bson.ObjectID, len(m.Attachments))
		for i, a := range m.Attachments {
			ids[i] = a.MediaID
		}
		copies, err := s.media.Forward(ctx, sender, chatID, key, m.ID, ids)
		if err != nil {
			return nil, s.internal(ctx, "forward message", err)
		}
		for _, a := range copies {
			f.attachments = append(f.attachments, attachmentOf(a))
			f.mediaIDs = append(f.mediaIDs, a.MediaID)
		}
	}
	if f.text == "" && len(f.attachments) == 0 {
		return nil, errNothing
	}
	return f, nil
}

// forwardSource loads the message to forward, as sender may see it.
func (s *Service) forwardSource(ctx context.Context, sender int, src *parleyv1.ForwardSource) (*messageDoc, error) {
	chatID, err := bson.ObjectIDFromHex(src.GetChatId())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("forward.chat_id: not a chat id"))
	}
	msgID, err := bson.ObjectIDFromHex(src.GetMessageId())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("forward.message_id: not a message id"))
	}
	c, err := s.store.getChat(ctx, chatID)
	if errors.Is(err, errNoChat) {
		return nil, errNoSource
	}
	if err != nil {
		return nil, s.internal(ctx, "forward message", err)
	}
	if _, err := memberOf(c, sender); err != nil {
		return nil, errNoSource
	}
	m, err := s.store.getMessage(ctx, c.ID, msgID)
	if errors.Is(err, errNoMessage) {
		return nil, errNoSource
	}
	if err != nil {
		return nil, s.internal(ctx, "forward message", err)
	}
	if m.DeletedAt != nil {
		return nil, errDeleted
	}
	return m, nil
}

// attachmentOf is what a message keeps of a file sent with it.
func attachmentOf(a media.Attachment) attachmentDoc {
	return attachmentDoc{
		Type: a.Type, URL: a.URL, MediaID: a.MediaID, FileName: a.FileName, ContentType: a.ContentType,
		Size: a.Size, Width: a.Width, Height: a.Height, Thumbnail: a.ThumbnailURL(),
	}
}
