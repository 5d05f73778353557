package chat_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// listIDs pages through u's chat list (archived or not), size at a time,
// and returns the chats' ids in the order listed.
func listIDs(t *testing.T, u *user, archived bool, size int32) []string {
	t.Helper()
	var out []string
	tok := ""
	for {
		res, err := u.chats.ListChats(context.Background(), req(u, &parleyv1.ListChatsRequest{PageSize: size, PageToken: tok, Archived: archived}))
		if err != nil {
			t.Fatalf("ListChats: %v", err)
		}
		if n := len(res.Msg.GetChats()); n > int(size) {
			t.Fatalf("a page of %d chats, asked for %d", n, size)
		}
		for _, c := range res.Msg.GetChats() {
			out = append(out, c.GetId())
		}
		if tok = res.Msg.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

func updateSettings(t *testing.T, u *user, r *parleyv1.UpdateChatSettingsRequest) *parleyv1.ChatSettings {
	t.Helper()
	res, err := u.chats.UpdateChatSettings(context.Background(), req(u, r))
	if err != nil {
		t.Fatalf("UpdateChatSettings(%v): %v", r, err)
	}
	return res.Msg.GetSettings()
}

func TestChatSettings_PinArchiveMute(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			me, other := newUser(t, srv, p), newUser(t, srv, p)
			// Five groups; the last created is the most recent.
			var ids []string
			for range 5 {
				ids = append(ids, group(t, me, "g", other).GetId())
			}
			byActivity := func(keep ...string) []string {
				var out []string
				for i := len(ids) - 1; i >= 0; i-- {
					if slices.Contains(keep, ids[i]) {
						out = append(out, ids[i])
					}
				}
				return out
			}
			devices := subscribe(t, srv, p, me)
			othersStream := subscribe(t, srv, p, other)

			updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[0], Pinned: proto.Bool(true)})
			updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[2], Pinned: proto.Bool(true)})
			st := updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[4], Archived: proto.Bool(true)})
			if !st.GetArchived() || st.GetPinnedAt() != nil {
				t.Errorf("archived chat's settings: %v", st)
			}
			// Pinned first (the latest pin first), then by activity;
			// the archived chat apart; across pages of every size.
			want := append([]string{ids[2], ids[0]}, byActivity(ids[1], ids[3])...)
			for _, size := range []int32{1, 2, 3, 50} {
				if got := listIDs(t, me, false, size); !slices.Equal(got, want) {
					t.Errorf("pages of %d: chats %v, want %v", size, got, want)
				}
			}
			if got := listIDs(t, me, true, 1); !slices.Equal(got, []string{ids[4]}) {
				t.Errorf("archived chats %v, want %v", got, []string{ids[4]})
			}
			// The other member's list is its own.
			if got := listIDs(t, other, false, 50); !slices.Equal(got, byActivity(ids...)) {
				t.Errorf("the other member's chats %v, want %v", got, byActivity(ids...))
			}

			// Pinning an archived chat unarchives it; archiving a pinned
			// one unpins it.
			updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[4], Pinned: proto.Bool(true)})
			updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[0], Archived: proto.Bool(true)})
			want = append([]string{ids[4], ids[2]}, byActivity(ids[1], ids[3])...)
			if got := listIDs(t, me, false, 2); !slices.Equal(got, want) {
				t.Errorf("after re-pinning: chats %v, want %v", got, want)
			}
			if got := listIDs(t, me, true, 50); !slices.Equal(got, []string{ids[0]}) {
				t.Errorf("after re-archiving: archived %v, want %v", got, []string{ids[0]})
			}

			// Mute for an hour, then for ever, then not.
			until := time.Now().Add(time.Hour).Truncate(time.Millisecond)
			st = updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[1], Mute: &parleyv1.UpdateChatSettingsRequest_MuteUntil{MuteUntil: timestamppb.New(until)}})
			if !st.GetMuted() || !st.GetMutedUntil().AsTime().Equal(until) {
				t.Errorf("muted for an hour: %v", st)
			}
			if got := getChat(t, me, ids[1]).GetSettings(); !got.GetMuted() || !got.GetMutedUntil().AsTime().Equal(until) {
				t.Errorf("GetChat after a mute: settings %v", got)
			}
			st = updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[1], Mute: &parleyv1.UpdateChatSettingsRequest_Muted{Muted: true}})
			if !st.GetMuted() || st.GetMutedUntil() != nil {
				t.Errorf("muted for ever: %v", st)
			}
			st = updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: ids[1], Mute: &parleyv1.UpdateChatSettingsRequest_Muted{Muted: false}})
			if st.GetMuted() || st.GetMutedUntil() != nil {
				t.Errorf("unmuted: %v", st)
			}
			if _, err := me.chats.UpdateChatSettings(context.Background(), req(me, &parleyv1.UpdateChatSettingsRequest{
				ChatId: ids[1], Mute: &parleyv1.UpdateChatSettingsRequest_MuteUntil{MuteUntil: timestamppb.New(time.Now().Add(-time.Minute))},
			})); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("mute until a past time: %v, want invalid_argument", err)
			}

			// Every change reached the member's devices, in order, and
			// nobody else.
			var kinds []bool
			for range 8 {
				ev := nextEvent(t, devices, func(ev *parleyv1.Event) bool { return ev.GetChatSettingsChanged() != nil })
				kinds = append(kinds, ev.GetChatSettingsChanged().GetSettings().GetMuted())
			}
			if !slices.Equal(kinds[5:], []bool{true, true, false}) {
				t.Errorf("the mute events said muted = %v, want true, true, false", kinds[5:])
			}
			send(t, me, ids[3], "after the settings")
			ev := nextEvent(t, othersStream, func(ev *parleyv1.Event) bool {
				return ev.GetChatSettingsChanged() != nil || ev.GetMessageCreated() != nil
			})
			if ev.GetChatSettingsChanged() != nil {
				t.Errorf("another member heard of the settings: %v", ev)
			}
		})
	}
}

func TestChatSettings_Authorization(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // the same checks on any store; minutes on FerretDB 1.x
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, member, removed, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, admin, "g", member, removed)
			updateSettings(t, removed, &parleyv1.UpdateChatSettingsRequest{ChatId: g.GetId(), Pinned: proto.Bool(true)})
			if _, err := admin.chats.RemoveParticipant(context.Background(), req(admin, &parleyv1.RemoveParticipantRequest{ChatId: g.GetId(), UserId: removed.id})); err != nil {
				t.Fatal(err)
			}
			m := send(t, admin, g.GetId(), "hi")
			for _, u := range []*user{outsider, removed} {
				_, err := u.chats.UpdateChatSettings(context.Background(), req(u, &parleyv1.UpdateChatSettingsRequest{ChatId: g.GetId(), Archived: proto.Bool(true)}))
				wantCode(t, err, connect.CodeNotFound)
				_, err = u.msgs.DeleteMessagesForMe(context.Background(), req(u, &parleyv1.DeleteMessagesForMeRequest{ChatId: g.GetId(), MessageIds: []string{m.GetId()}}))
				wantCode(t, err, connect.CodeNotFound)
			}
			_, err := member.chats.UpdateChatSettings(context.Background(), req(member, &parleyv1.UpdateChatSettingsRequest{
				ChatId: g.GetId(), Archived: proto.Bool(true), Pinned: proto.Bool(true),
			}))
			wantCode(t, err, connect.CodeInvalidArgument)
			// Archiving and unpinning at once (archiving unpins anyway).
			updateSettings(t, member, &parleyv1.UpdateChatSettingsRequest{ChatId: g.GetId(), Pinned: proto.Bool(true)})
			if st := updateSettings(t, member, &parleyv1.UpdateChatSettingsRequest{ChatId: g.GetId(), Archived: proto.Bool(true), Pinned: proto.Bool(false)}); !st.GetArchived() || st.GetPinnedAt() != nil {
				t.Errorf("archived and unpinned at once: %v", st)
			}
			updateSettings(t, member, &parleyv1.UpdateChatSettingsRequest{ChatId: g.GetId(), Archived: proto.Bool(false)})
			for _, u := range []*user{admin, member} {
				updateSettings(t, u, &parleyv1.UpdateChatSettingsRequest{ChatId: g.GetId(), Archived: proto.Bool(true)})
			}
			// Rejoining starts afresh: the pin of the removed member
			// went with it.
			if _, err := admin.chats.AddParticipants(context.Background(), req(admin, &parleyv1.AddParticipantsRequest{ChatId: g.GetId(), UserIds: []int32{removed.id}})); err != nil {
				t.Fatal(err)
			}
			if st := getChat(t, removed, g.GetId()).GetSettings(); st.GetPinnedAt() != nil {
				t.Errorf("a member who came back kept its pin: %v", st)
			}
		})
	}
}

func TestChatSettings_PinLimitRace(t *testing.T) {
	srv := servertest.New(t)
	me := newUser(t, srv, servertest.Protocols[0])
	var ids []string
	for range chat.MaxPinnedChats + 6 {
		ids = append(ids, group(t, me, "g").GetId())
	}
	for _, id := range ids[:chat.MaxPinnedChats-2] {
		updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: id, Pinned: proto.Bool(true)})
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i, id := range ids[chat.MaxPinnedChats-2:] {
		wg.Go(func() {
			_, errs[i] = me.chats.UpdateChatSettings(context.Background(), req(me, &parleyv1.UpdateChatSettingsRequest{ChatId: id, Pinned: proto.Bool(true)}))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Errorf("a pin past the limit: %v, want failed_precondition", err)
		}
	}
	res, err := me.chats.ListChats(context.Background(), req(me, &parleyv1.ListChatsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	pinned := 0
	for _, c := range res.Msg.GetChats() {
		if c.GetSettings().GetPinnedAt() != nil {
			pinned++
		}
	}
	if pinned > chat.MaxPinnedChats || pinned < chat.MaxPinnedChats-2 {
		t.Errorf("%d chats pinned after racing pins; want at most %d, and the first %d", pinned, chat.MaxPinnedChats, chat.MaxPinnedChats-2)
	}
	// Pins that did not race fill the limit, and no more.
	for _, id := range ids[chat.MaxPinnedChats-2:] {
		_, err := me.chats.UpdateChatSettings(context.Background(), req(me, &parleyv1.UpdateChatSettingsRequest{ChatId: id, Pinned: proto.Bool(true)}))
		if err != nil {
			wantCode(t, err, connect.CodeFailedPrecondition)
		}
	}
	res, err = me.chats.ListChats(context.Background(), req(me, &parleyv1.ListChatsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	pinned = 0
	for _, c := range res.Msg.GetChats() {
		if c.GetSettings().GetPinnedAt() != nil {
			pinned++
		}
	}
	if pinned != chat.MaxPinnedChats {
		t.Errorf("%d chats pinned after pinning one at a time; want %d", pinned, chat.MaxPinnedChats)
	}
	// A pin refused at the limit changes nothing of what came with it.
	archived := group(t, me, "archived").GetId()
	updateSettings(t, me, &parleyv1.UpdateChatSettingsRequest{ChatId: archived, Archived: proto.Bool(true)})
	_, err = me.chats.UpdateChatSettings(context.Background(), req(me, &parleyv1.UpdateChatSettingsRequest{
		ChatId: archived, Pinned: proto.Bool(true), Mute: &parleyv1.UpdateChatSettingsRequest_Muted{Muted: true},
	}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	if st := getChat(t, me, archived).GetSettings(); !st.GetArchived() || st.GetMuted() || st.GetPinnedAt() != nil {
		t.Errorf("after a pin refused at the limit, with a mute: settings %v, want archived as before, not muted", st)
	}
}

func TestDeleteMessagesForMe(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b := newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, a, "g", b)
			other := group(t, a, "other")
			var sent []*parleyv1.Message
			for _, text := range []string{"one", "two", "three", "four"} {
				sent = append(sent, send(t, a, g.GetId(), text))
			}
			elsewhere := send(t, a, other.GetId(), "elsewhere")
			devices := subscribe(t, srv, p, b)
			hide := func(ids ...string) error {
				_, err := b.msgs.DeleteMessagesForMe(context.Background(), req(b, &parleyv1.DeleteMessagesForMeRequest{ChatId: g.GetId(), MessageIds: ids}))
				return err
			}
			if err := hide(sent[1].GetId(), sent[2].GetId()); err != nil {
				t.Fatal(err)
			}
			if err := hide(sent[1].GetId()); err != nil {
				t.Errorf("hiding a hidden message again: %v", err)
			}
			ev := nextEvent(t, devices, func(ev *parleyv1.Event) bool { return ev.GetMessagesHidden() != nil }).GetMessagesHidden()
			if !slices.Equal(ev.GetSeqs(), []int64{sent[1].GetSeq(), sent[2].GetSeq()}) {
				t.Errorf("messages_hidden seqs %v, want %v", ev.GetSeqs(), []int64{sent[1].GetSeq(), sent[2].GetSeq()})
			}
			texts := func(u *user) []string {
				var out []string
				for _, m := range listAll(t, u, g.GetId()) {
					out = append(out, m.GetText())
				}
				return out
			}
			if got := texts(b); !slices.Equal(got, []string{"one", "four"}) {
				t.Errorf("b lists %v, want [one four]", got)
			}
			if got := texts(a); !slices.Equal(got, []string{"one", "two", "three", "four"}) {
				t.Errorf("a lists %v, want all four", got)
			}
			// Nor are they among b's pinned messages.
			for _, m := range []*parleyv1.Message{sent[1], sent[3]} {
				if _, err := a.msgs.PinMessage(context.Background(), req(a, &parleyv1.PinMessageRequest{ChatId: g.GetId(), MessageId: m.GetId()})); err != nil {
					t.Fatal(err)
				}
			}
			pinned := func(u *user) []string {
				res, err := u.msgs.ListPinnedMessages(context.Background(), req(u, &parleyv1.ListPinnedMessagesRequest{ChatId: g.GetId()}))
				if err != nil {
					t.Fatal(err)
				}
				var out []string
				for _, m := range res.Msg.GetMessages() {
					out = append(out, m.GetText())
				}
				return out
			}
			if got, want := pinned(b), []string{"four"}; !slices.Equal(got, want) {
				t.Errorf("b's pinned messages: %v, want %v", got, want)
			}
			if got, want := pinned(a), []string{"four", "two"}; !slices.Equal(got, want) {
				t.Errorf("a's pinned messages: %v, want %v", got, want)
			}
			// A page whose messages b hid whole reads on to the next
			// that shows one, both ways.
			res, err := b.msgs.ListMessages(context.Background(), req(b, &parleyv1.ListMessagesRequest{ChatId: g.GetId(), Limit: 2,
				Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: sent[0].GetSeq()}}))
			if err != nil {
				t.Fatal(err)
			}
			if ms := res.Msg.GetMessages(); len(ms) != 1 || ms[0].GetText() != "four" || res.Msg.GetHasMore() || res.Msg.GetPageEndSeq() != sent[3].GetSeq() {
				t.Errorf("after seq %d by two: %v, has_more %v, end %d; want [four], no more, end %d", sent[0].GetSeq(), ms, res.Msg.GetHasMore(), res.Msg.GetPageEndSeq(), sent[3].GetSeq())
			}
			res, err = b.msgs.ListMessages(context.Background(), req(b, &parleyv1.ListMessagesRequest{ChatId: g.GetId(), Limit: 2,
				Cursor: &parleyv1.ListMessagesRequest_BeforeSeq{BeforeSeq: sent[3].GetSeq()}}))
			if err != nil {
				t.Fatal(err)
			}
			if ms := res.Msg.GetMessages(); len(ms) != 1 || ms[0].GetText() != "one" || res.Msg.GetPageEndSeq() != sent[0].GetSeq() {
				t.Errorf("before seq %d by two: %v, end %d; want [one], end %d", sent[3].GetSeq(), ms, res.Msg.GetPageEndSeq(), sent[0].GetSeq())
			}
			// More pages hidden whole than one call reads on: an empty
			// page, and the next starts where it stopped.
			var many []string
			for i := range 9 {
				many = append(many, send(t, a, g.GetId(), "hidden "+strconv.Itoa(i)).GetId())
			}
			last := send(t, a, g.GetId(), "last")
			if err := hide(many...); err != nil {
				t.Fatal(err)
			}
			res, err = b.msgs.ListMessages(context.Background(), req(b, &parleyv1.ListMessagesRequest{ChatId: g.GetId(), Limit: 1,
				Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: sent[3].GetSeq()}}))
			if err != nil {
				t.Fatal(err)
			}
			if ms := res.Msg.GetMessages(); len(ms) != 0 || !res.Msg.GetHasMore() || res.Msg.GetPageEndSeq() <= sent[3].GetSeq() || res.Msg.GetPageEndSeq() >= last.GetSeq() {
				t.Fatalf("after seq %d by one, past 9 hidden: %v, has_more %v, end %d", sent[3].GetSeq(), ms, res.Msg.GetHasMore(), res.Msg.GetPageEndSeq())
			}
			if got := texts(b); !slices.Equal(got, []string{"one", "four", "last"}) {
				t.Errorf("b lists %v, want [one four last]", got)
			}
			// A message of another chat is refused, and nothing changes.
			wantCode(t, hide(sent[3].GetId(), elsewhere.GetId()), connect.CodeNotFound)
			if got := texts(b); !slices.Equal(got, []string{"one", "four", "last"}) {
				t.Errorf("after a refused call b lists %v, want [one four last]", got)
			}
		})
	}
}
