package chat_test

import (
	"context"
	"slices"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// receipts are a message's receipts as u gets them.
type receipts struct{ read, delivered, pending []int32 }

func getReceipts(t *testing.T, u *user, chatID, messageID string) receipts {
	t.Helper()
	res, err := u.msgs.GetMessageReceipts(context.Background(), req(u, &parleyv1.GetMessageReceiptsRequest{ChatId: chatID, MessageId: messageID}))
	if err != nil {
		t.Fatalf("GetMessageReceipts: %v", err)
	}
	return receipts{res.Msg.GetReadUserIds(), res.Msg.GetDeliveredUserIds(), res.Msg.GetPendingUserIds()}
}

func wantReceipts(t *testing.T, got, want receipts) {
	t.Helper()
	if !slices.Equal(got.read, want.read) || !slices.Equal(got.delivered, want.delivered) || !slices.Equal(got.pending, want.pending) {
		t.Fatalf("receipts: read %v, delivered %v, pending %v; want read %v, delivered %v, pending %v",
			got.read, got.delivered, got.pending, want.read, want.delivered, want.pending)
	}
}

func TestMessageReceipts(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			// Registered in this order, so that the group's order
			// (its admin, the sender, first) is not that of the ids.
			reader, deliverer, idle, sender, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			id := group(t, sender, "receipts", reader, deliverer, idle).GetId()
			m := send(t, sender, id, "seen?")
			if _, err := reader.msgs.MarkRead(ctx, req(reader, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: m.GetSeq()})); err != nil {
				t.Fatalf("MarkRead: %v", err)
			}
			if _, err := deliverer.msgs.MarkDelivered(ctx, req(deliverer, &parleyv1.MarkDeliveredRequest{ChatId: id, UpToSeq: m.GetSeq()})); err != nil {
				t.Fatalf("MarkDelivered: %v", err)
			}
			want := receipts{read: []int32{reader.id}, delivered: []int32{deliverer.id}, pending: []int32{idle.id}}
			wantReceipts(t, getReceipts(t, sender, id, m.GetId()), want)
			// Any member may ask; the sender is never listed.
			wantReceipts(t, getReceipts(t, idle, id, m.GetId()), want)

			// Of a later message by the reader, nobody else has anything
			// (the sender's read position is below it): by user id.
			later := send(t, reader, id, "later")
			wantReceipts(t, getReceipts(t, sender, id, later.GetId()), receipts{pending: []int32{deliverer.id, idle.id, sender.id}})

			// A deleted message has receipts too.
			if _, err := sender.msgs.DeleteMessage(ctx, req(sender, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: m.GetId()})); err != nil {
				t.Fatalf("DeleteMessage: %v", err)
			}
			wantReceipts(t, getReceipts(t, sender, id, m.GetId()), want)

			_, err := outsider.msgs.GetMessageReceipts(ctx, req(outsider, &parleyv1.GetMessageReceiptsRequest{ChatId: id, MessageId: m.GetId()}))
			wantCode(t, err, connect.CodeNotFound)
			other := group(t, outsider, "other", sender).GetId()
			elsewhere := send(t, outsider, other, "elsewhere")
			_, err = sender.msgs.GetMessageReceipts(ctx, req(sender, &parleyv1.GetMessageReceiptsRequest{ChatId: id, MessageId: elsewhere.GetId()}))
			wantCode(t, err, connect.CodeNotFound)

			// A request's starter learns nothing, though the other
			// member read the message; once accepted, it does.
			starter, peer := newUser(t, srv, p), newUser(t, srv, p)
			private := servertest.PrivateChat(t, starter.chats, starter.token, peer.id).GetId()
			hello := send(t, starter, private, "hello")
			if _, err := peer.msgs.MarkRead(ctx, req(peer, &parleyv1.MarkReadRequest{ChatId: private, UpToSeq: hello.GetSeq()})); err != nil {
				t.Fatalf("MarkRead: %v", err)
			}
			wantReceipts(t, getReceipts(t, starter, private, hello.GetId()), receipts{})
			servertest.AcceptRequest(t, peer.chats, peer.token, private)
			wantReceipts(t, getReceipts(t, starter, private, hello.GetId()), receipts{read: []int32{peer.id}})
		})
	}
}
