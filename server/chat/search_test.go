package chat_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// search returns the texts of what u finds, page by page of size.
func search(t *testing.T, u *user, chatID, query string, size int32) []string {
	t.Helper()
	var out []string
	tok := ""
	for {
		res, err := u.msgs.SearchMessages(context.Background(), req(u, &parleyv1.SearchMessagesRequest{
			Query: query, ChatId: chatID, PageSize: size, PageToken: tok,
		}))
		if err != nil {
			t.Fatalf("SearchMessages(%q): %v", query, err)
		}
		for _, m := range res.Msg.GetMessages() {
			out = append(out, m.GetText())
		}
		if tok = res.Msg.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

func TestSearchMessages(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b, c := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			ab := group(t, a, "ab", b)
			ac := group(t, a, "ac", c)
			left := group(t, b, "left", a)
			send(t, a, ab.GetId(), "Rendez-vous au Café de Flore")
			send(t, b, ab.GetId(), "café? non, THÉ")
			send(t, a, ac.GetId(), "le cafe est froid")
			send(t, b, left.GetId(), "cafe secret")
			hidden := send(t, b, ab.GetId(), "cafe caché")
			edited := send(t, a, ab.GetId(), "nothing here")
			deleted := send(t, a, ab.GetId(), "cafe deleted")
			if _, err := a.msgs.EditMessage(context.Background(), req(a, &parleyv1.EditMessageRequest{ChatId: ab.GetId(), MessageId: edited.GetId(), Text: "Cafétéria now"})); err != nil {
				t.Fatal(err)
			}
			if _, err := a.msgs.DeleteMessage(context.Background(), req(a, &parleyv1.DeleteMessageRequest{ChatId: ab.GetId(), MessageId: deleted.GetId()})); err != nil {
				t.Fatal(err)
			}
			if _, err := a.msgs.DeleteMessagesForMe(context.Background(), req(a, &parleyv1.DeleteMessagesForMeRequest{ChatId: ab.GetId(), MessageIds: []string{hidden.GetId()}})); err != nil {
				t.Fatal(err)
			}
			if _, err := a.chats.LeaveChat(context.Background(), req(a, &parleyv1.LeaveChatRequest{ChatId: left.GetId()})); err != nil {
				t.Fatal(err)
			}

			for _, tc := range []struct {
				u      *user
				chatID string
				query  string
				want   []string
			}{
				// Newest first; accents and case aside; prefixes; every
				// chat a is in, not the one it left; edits followed,
				// deletes and hidden messages left out.
				{a, "", "CAFE", []string{"Cafétéria now", "le cafe est froid", "café? non, THÉ", "Rendez-vous au Café de Flore"}},
				{a, "", "caf the", []string{"café? non, THÉ"}},
				{a, "", "rendez vous flo", []string{"Rendez-vous au Café de Flore"}},
				{a, ab.GetId(), "café", []string{"Cafétéria now", "café? non, THÉ", "Rendez-vous au Café de Flore"}},
				{a, "", "afe", nil},
				{a, "", "secret", nil},
				{a, "", "deleted", nil},
				{a, "", "nothing", nil},
				// b still sees what a hid for itself.
				{b, ab.GetId(), "cache", []string{"cafe caché"}},
				{c, "", "cafe", []string{"le cafe est froid"}},
			} {
				for _, size := range []int32{1, 2, 0} {
					if got := search(t, tc.u, tc.chatID, tc.query, size); !slices.Equal(got, tc.want) {
						t.Errorf("search %q in %q (pages of %d): %q, want %q", tc.query, tc.chatID, size, got, tc.want)
					}
				}
			}

			// Hidden matches, more than a page's rounds of them, are
			// skipped without ending the search.
			var zebras []string
			for i := range 7 {
				zebras = append(zebras, send(t, c, ac.GetId(), fmt.Sprintf("zebra %d", i)).GetId())
			}
			if _, err := c.msgs.DeleteMessagesForMe(context.Background(), req(c, &parleyv1.DeleteMessagesForMeRequest{ChatId: ac.GetId(), MessageIds: zebras[1:]})); err != nil {
				t.Fatal(err)
			}
			if got := search(t, c, "", "zebra", 1); !slices.Equal(got, []string{"zebra 0"}) {
				t.Errorf("search past 6 hidden matches: %q, want [zebra 0]", got)
			}

			// Refusals.
			_, err := c.msgs.SearchMessages(context.Background(), req(c, &parleyv1.SearchMessagesRequest{Query: "cafe", ChatId: ab.GetId()}))
			wantCode(t, err, connect.CodeNotFound)
			_, err = a.msgs.SearchMessages(context.Background(), req(a, &parleyv1.SearchMessagesRequest{Query: "?!"}))
			wantCode(t, err, connect.CodeInvalidArgument)
			_, err = a.msgs.SearchMessages(context.Background(), req(a, &parleyv1.SearchMessagesRequest{Query: "a b c d e f g h i"}))
			wantCode(t, err, connect.CodeInvalidArgument)
			_, err = a.msgs.SearchMessages(context.Background(), req(a, &parleyv1.SearchMessagesRequest{Query: "cafe", PageToken: "nope"}))
			wantCode(t, err, connect.CodeInvalidArgument)
		})
	}
}
