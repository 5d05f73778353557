package chat

import (
	"context"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// forEvent is the viewer of a message rendered for a live event, which
// every member receives alike: nothing in it is the viewer's own.
const forEvent = 0

// renderMessages renders stored messages of the chat for viewer (a user
// id, or forEvent): their statuses from p, and what the chat and the
// other collections hold of them.
func (s *Service) renderMessages(ctx context.Context, c *chatDoc, viewer int, p positions, docs []messageDoc) ([]*parleyv1.Message, error) {
	out := make([]*parleyv1.Message, len(docs))
	for i := range docs {
		out[i] = toMessage(&docs[i], p)
		out[i].Pin = pinOf(c, &docs[i])
	}
	quoted, err := s.store.quoted(ctx, c.ID, docs)
	if err != nil {
		return nil, err
	}
	for i := range docs {
		if r := docs[i].ReplyTo; r != nil {
			out[i].ReplyTo = toQuote(r, quoted[r.MessageID])
		}
	}
	if err := s.renderReactions(ctx, viewer, docs, out); err != nil {
		return nil, err
	}
	return out, nil
}

// toQuote renders a reply's quote of the original message o as it is now
// (nil: no longer stored, shown as deleted).
func toQuote(r *replyDoc, o *messageDoc) *parleyv1.ReplyQuote {
	q := &parleyv1.ReplyQuote{MessageId: r.MessageID.Hex(), Seq: r.Seq, SenderId: int32(r.SenderID)}
	if o == nil || o.DeletedAt != nil {
		q.Deleted = true
		return q
	}
	q.Preview = preview(o.Text)
	for _, a := range o.Attachments {
		q.AttachmentTypes = append(q.AttachmentTypes, a.Type)
	}
	return q
}

// renderMessage is renderMessages for one message.
func (s *Service) renderMessage(ctx context.Context, c *chatDoc, viewer int, p positions, m *messageDoc) (*parleyv1.Message, error) {
	out, err := s.renderMessages(ctx, c, viewer, p, []messageDoc{*m})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
