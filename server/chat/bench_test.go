package chat_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// BenchmarkSendMessage compares SendMessage through the running server
// (HTTP, Connect, authentication, validation) with the same service
// method called in-process on the same stores, 16 senders at a time. The
// ratio of the two throughputs is the server's overhead.
func BenchmarkSendMessage(b *testing.B) {
	srv := servertest.New(b, servertest.WithOwnMongoDatabase(b))
	var senders []*user
	for range 16 {
		senders = append(senders, newUser(b, srv, servertest.Protocols[0]))
	}
	chatID := group(b, senders[0], "bench", senders[1:]...).GetId()
	direct := chat.New(slog.New(slog.DiscardHandler), srv.App.Mongo(), srv.App.Redis(), srv.App.DocLocks(),
		servertest.SharedStores(b).RedisPrefix, nil, nil, srv.App.Live(), nil, nil)
	// The same send limit as the server's (the two share the senders'
	// budgets in Redis), so that neither measures refusals.
	direct.LimitSends(chat.SendLimit{Rate: 1_000_000, Burst: 1_000_000})
	var keys atomic.Int64

	for _, mode := range []string{"direct", "rpc"} {
		b.Run(mode, func(b *testing.B) {
			latencies := concurrently(b, len(senders), func(worker int) error {
				u := senders[worker]
				msg := &parleyv1.SendMessageRequest{
					ChatId: chatID, ClientMessageId: fmt.Sprintf("b%d", keys.Add(1)), Text: "benchmark message",
				}
				if mode == "direct" {
					ctx := auth.NewContext(context.Background(), auth.Identity{UserID: int(u.id)})
					_, err := direct.SendMessage(ctx, connect.NewRequest(msg))
					return err
				}
				_, err := u.msgs.SendMessage(context.Background(), req(u, msg))
				return err
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sends/s")
			b.ReportMetric(pct(latencies, 0.50), "p50-ms")
			b.ReportMetric(pct(latencies, 0.99), "p99-ms")
		})
	}
}

// BenchmarkListChats lists the chats of a user who is in 200 of them.
func BenchmarkListChats(b *testing.B) {
	srv := servertest.New(b, servertest.WithOwnMongoDatabase(b))
	u, peer := newUser(b, srv, servertest.Protocols[0]), newUser(b, srv, servertest.Protocols[0])
	for i := range 200 {
		id := group(b, u, fmt.Sprint("chat ", i), peer).GetId()
		send(b, peer, id, "unread")
	}
	b.ResetTimer()
	for b.Loop() {
		res, err := u.chats.ListChats(context.Background(), req(u, &parleyv1.ListChatsRequest{PageSize: 200}))
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Msg.GetChats()) != 200 {
			b.Fatalf("listed %d chats, want 200", len(res.Msg.GetChats()))
		}
	}
}

// BenchmarkListMessages reads a 50-message page of a chat of 1,000.
func BenchmarkListMessages(b *testing.B) {
	srv := servertest.New(b, servertest.WithOwnMongoDatabase(b))
	u, peer := newUser(b, srv, servertest.Protocols[0]), newUser(b, srv, servertest.Protocols[0])
	id := group(b, u, "history", peer).GetId()
	for range 1000 {
		send(b, peer, id, "some history")
	}
	b.ResetTimer()
	for b.Loop() {
		res, err := u.msgs.ListMessages(context.Background(), req(u, &parleyv1.ListMessagesRequest{ChatId: id, Limit: 50}))
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Msg.GetMessages()) != 50 {
			b.Fatalf("listed %d messages, want 50", len(res.Msg.GetMessages()))
		}
	}
}

// concurrently makes b.N calls from n workers and returns their latencies.
func concurrently(b *testing.B, n int, call func(worker int) error) []time.Duration {
	return servertest.Concurrently(b, n, call)
}

// pct returns the q-quantile of the latencies in milliseconds.
func pct(d []time.Duration, q float64) float64 {
	return float64(servertest.Percentile(d, q)) / float64(time.Millisecond)
}
