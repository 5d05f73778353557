package clustertest_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// follower follows a chat as a client does: a live stream that resumes
// from its cursor when it breaks, and, told that its cursor is gone,
// starts afresh and lists the chat's messages.
type follower struct {
	mu      sync.Mutex
	seqs    map[int64]bool
	resyncs int
	changed chan struct{}
	// ready is closed when the first stream is ready.
	ready chan struct{}
}

func follow(ctx context.Context, cl servertest.Clients, token, chatID string) *follower {
	f := &follower{seqs: map[int64]bool{}, changed: make(chan struct{}, 1), ready: make(chan struct{})}
	go func() {
		cursor, relist, first := "", false, true
		for ctx.Err() == nil {
			s, err := cl.Live.Subscribe(ctx, servertest.WithToken(&parleyv1.SubscribeRequest{ResumeCursor: cursor}, token))
			if err == nil {
				for s.Receive() {
					ev := s.Msg().GetEvent()
					if ev.GetCursor() != "" {
						cursor = ev.GetCursor()
					}
					if ev.GetReady() != nil && first {
						first = false
						close(f.ready)
					}
					if ev.GetReady() != nil && relist {
						msgs, err := servertest.ListMessagesAfter(cl.Message, token, chatID, 0)
						if err != nil {
							break
						}
						relist = false
						for _, m := range msgs {
							f.add(m.GetSeq())
						}
					}
					if m := ev.GetMessageCreated().GetMessage(); m.GetChatId() == chatID {
						f.add(m.GetSeq())
					}
				}
				err = s.Err()
				s.Close()
			}
			if connect.CodeOf(err) == connect.CodeFailedPrecondition {
				// The cursor is gone (the log lost entries with its
				// node): start from now, and list what was missed.
				f.mu.Lock()
				f.resyncs++
				f.mu.Unlock()
				cursor, relist = "", true
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return f
}

func (f *follower) add(seq int64) {
	f.mu.Lock()
	f.seqs[seq] = true
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until the follower has every seq in want, for up to a
// minute, and returns the seqs it lacks then.
func (f *follower) waitFor(want []int64) []int64 {
	deadline := time.After(time.Minute)
	for {
		f.mu.Lock()
		var missing []int64
		for _, s := range want {
			if !f.seqs[s] {
				missing = append(missing, s)
			}
		}
		f.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-f.changed:
		case <-deadline:
			return missing
		}
	}
}

// Streams open on an instance go on delivering after the Redis node that
// holds some of their channels dies: the instance subscribes the
// channels again on the replica that took over (one SSUBSCRIBE each, on
// each channel's node), and every stream reads its log again from its
// cursor, or is told to re-sync when the log lost entries with the node.
// Every message whose send was acknowledged reaches every member.
func TestFailover_LiveStreamsGoOn(t *testing.T) {
	c := newCluster(t)
	srv := servertest.New(t)
	cl := servertest.NewClients(srv, servertest.Protocols[1])
	alice := servertest.Register(t, cl.Auth, servertest.UniqueName("alice"))
	// Members enough that the instance holds channels of several slots on
	// every node.
	var members []servertest.Account
	var ids []int32
	for range 12 {
		m := servertest.Register(t, cl.Auth, servertest.UniqueName("member"))
		members = append(members, m)
		ids = append(ids, m.ID)
	}
	chat := servertest.GroupChat(t, cl.Chat, alice.Token, "failover", ids...).GetId()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	followers := make([]*follower, len(members))
	for i, m := range members {
		followers[i] = follow(ctx, cl, m.Token, chat)
	}
	for _, f := range followers {
		select {
		case <-f.ready:
		case <-time.After(time.Minute):
			t.Fatal("a stream was not ready within a minute")
		}
	}
	var acked []int64
	send := func() {
		t.Helper()
		id := servertest.UniqueName("failover")
		var seq int64
		// A retry reuses the client message id, as a client's does.
		eventually(t, "SendMessage", func() error {
			res, err := cl.Message.SendMessage(context.Background(), servertest.WithToken(&parleyv1.SendMessageRequest{
				ChatId: chat, ClientMessageId: id, Text: "through a failover",
			}, alice.Token))
			if err != nil {
				return err
			}
			seq = res.Msg.GetMessage().GetSeq()
			return nil
		})
		acked = append(acked, seq)
	}
	send()
	for i, f := range followers {
		if missing := f.waitFor(acked); len(missing) > 0 {
			t.Fatalf("member %d lacks %v before the failover", i, missing)
		}
	}
	c.kill(t, c.master(t, userKey(members[0].ID)))
	for range 20 {
		send()
	}
	resyncs := 0
	for i, f := range followers {
		if missing := f.waitFor(acked); len(missing) > 0 {
			t.Errorf("member %d lacks the acknowledged messages %v (of %v)", i, missing, acked)
		}
		f.mu.Lock()
		resyncs += f.resyncs
		f.mu.Unlock()
	}
	if len(slices.Compact(slices.Sorted(slices.Values(acked)))) != len(acked) {
		t.Errorf("two sends were given one seq: %v", acked)
	}
	t.Logf("%d members got all %d messages through the failover; %d re-syncs", len(followers), len(acked), resyncs)
}
