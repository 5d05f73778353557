package user_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// search calls SearchUsers and fails the test on an error.
func search(t *testing.T, c servertest.Clients, token string, req *parleyv1.SearchUsersRequest) *parleyv1.SearchUsersResponse {
	t.Helper()
	res, err := c.User.SearchUsers(context.Background(), servertest.WithToken(req, token))
	if err != nil {
		t.Fatalf("SearchUsers(%v): %v", req, err)
	}
	return res.Msg
}

func usernames(us []*parleyv1.User) []string {
	var names []string
	for _, u := range us {
		names = append(names, u.GetUsername())
	}
	return names
}

func TestUserService_SearchUsers(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	caller := servertest.Register(t, base.Auth, servertest.UniqueName("Searcher"))
	// A mixed-case prefix no other user has; the "x" ends it so that no
	// later uniqueName extends it.
	prefix := servertest.UniqueName("SeArCh") + "x"
	// Byte order (upper case first) differs from the order of
	// lower(username) the method promises.
	suffixes := []string{"Delta", "alpha", "Charlie", "bravo", "Echo"}
	ids := map[string]int32{}
	for _, s := range suffixes {
		acc := servertest.Register(t, base.Auth, prefix+s)
		ids[acc.Username] = acc.ID
	}
	want := []string{prefix + "alpha", prefix + "bravo", prefix + "Charlie", prefix + "Delta", prefix + "Echo"}

	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		t.Run(p.Name+"/any case", func(t *testing.T) {
			for _, q := range []string{prefix, strings.ToLower(prefix), strings.ToUpper(prefix)} {
				res := search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: q})
				if got := usernames(res.GetUsers()); !slices.Equal(got, want) {
					t.Errorf("SearchUsers(%q) = %q, want %q", q, got, want)
				}
				if res.GetNextPageToken() != "" {
					t.Errorf("SearchUsers(%q) next_page_token = %q, want none for a single page", q, res.GetNextPageToken())
				}
				for _, u := range res.GetUsers() {
					if u.GetId() != ids[u.GetUsername()] {
						t.Errorf("user %q has id %d, want %d", u.GetUsername(), u.GetId(), ids[u.GetUsername()])
					}
					if !strings.HasPrefix(u.GetAvatarUrl(), "/avatars/identicon/") {
						t.Errorf("user %q avatar_url = %q, want their identicon", u.GetUsername(), u.GetAvatarUrl())
					}
				}
			}
		})

		t.Run(p.Name+"/narrower prefix", func(t *testing.T) {
			res := search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: strings.ToUpper(prefix + "c")})
			if got, want := usernames(res.GetUsers()), []string{prefix + "Charlie"}; !slices.Equal(got, want) {
				t.Errorf("got %q, want %q", got, want)
			}
			res = search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: prefix + "zulu"})
			if len(res.GetUsers()) != 0 || res.GetNextPageToken() != "" {
				t.Errorf("got %q, token %q; want no users", usernames(res.GetUsers()), res.GetNextPageToken())
			}
		})

		t.Run(p.Name+"/pages of 2", func(t *testing.T) {
			var got []string
			seen := map[int32]bool{}
			token := ""
			for page := 1; ; page++ {
				if page > len(want)+1 {
					t.Fatalf("still paging after %d pages: got %q", page-1, got)
				}
				res := search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: strings.ToLower(prefix), PageSize: 2, PageToken: token})
				if n := len(res.GetUsers()); n > 2 || (n < 2 && res.GetNextPageToken() != "") {
					t.Fatalf("page %d has %d users and next_page_token %q; want 2 users on every page but the last", page, n, res.GetNextPageToken())
				}
				for _, u := range res.GetUsers() {
					if seen[u.GetId()] {
						t.Errorf("page %d repeats user %q", page, u.GetUsername())
					}
					seen[u.GetId()] = true
					got = append(got, u.GetUsername())
				}
				token = res.GetNextPageToken()
				if token == "" {
					if page != 3 {
						t.Errorf("%d pages, want 3", page)
					}
					break
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("pages = %q, want %q", got, want)
			}
		})

		t.Run(p.Name+"/page exactly full", func(t *testing.T) {
			res := search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: prefix, PageSize: int32(len(want))})
			if got := usernames(res.GetUsers()); !slices.Equal(got, want) || res.GetNextPageToken() != "" {
				t.Errorf("got %q, next_page_token %q; want %q and no token", got, res.GetNextPageToken(), want)
			}
			res = search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: prefix, PageSize: 4})
			if got := usernames(res.GetUsers()); !slices.Equal(got, want[:4]) || res.GetNextPageToken() == "" {
				t.Fatalf("got %q, next_page_token %q; want %q and a token", got, res.GetNextPageToken(), want[:4])
			}
			res = search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: prefix, PageSize: 4, PageToken: res.GetNextPageToken()})
			if got := usernames(res.GetUsers()); !slices.Equal(got, want[4:]) || res.GetNextPageToken() != "" {
				t.Errorf("second page %q, next_page_token %q; want %q and no token", got, res.GetNextPageToken(), want[4:])
			}
		})
	}
}

// TestUserService_SearchUsers_Wildcards checks that LIKE's wildcards and
// escape character in a prefix match only themselves.
func TestUserService_SearchUsers_Wildcards(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	caller := servertest.Register(t, base.Auth, servertest.UniqueName("Wild"))
	prefix := servertest.UniqueName("lit") + "x"
	under := servertest.Register(t, base.Auth, prefix+"a_1").Username
	servertest.Register(t, base.Auth, prefix+"ab1")
	servertest.Register(t, base.Auth, prefix+"aZ2")
	cases := []struct {
		prefix string
		want   []string
	}{
		{prefix + "a_", []string{under}},
		{prefix + "A_", []string{under}},
		{prefix + "_", nil},
		{prefix + "%", nil},
		{prefix + "a%", nil},
		{prefix + "%1", nil},
		{prefix + `\`, nil},
		{prefix + `a\_`, nil},
		{prefix + `'`, nil},
		{"%", nil},
		{"_", nil},
	}
	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		for _, tc := range cases {
			t.Run(p.Name+"/"+tc.prefix, func(t *testing.T) {
				res := search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: tc.prefix, PageSize: 100})
				if got := usernames(res.GetUsers()); !slices.Equal(got, tc.want) {
					t.Errorf("SearchUsers(%q) = %q, want %q", tc.prefix, got, tc.want)
				}
			})
		}
	}
}

func TestUserService_SearchUsers_BadInput(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	caller := servertest.Register(t, base.Auth, servertest.UniqueName("BadSearch"))
	b64 := base64.RawURLEncoding.EncodeToString
	cases := []struct {
		name  string
		req   *parleyv1.SearchUsersRequest
		token string
		want  connect.Code
	}{
		{"page token not base64", &parleyv1.SearchUsersRequest{Prefix: "a", PageToken: "!!not a token!!"}, caller.Token, connect.CodeInvalidArgument},
		{"page token not JSON", &parleyv1.SearchUsersRequest{Prefix: "a", PageToken: b64([]byte("hello"))}, caller.Token, connect.CodeInvalidArgument},
		{"page token without an id", &parleyv1.SearchUsersRequest{Prefix: "a", PageToken: b64([]byte(`{"u":"a"}`))}, caller.Token, connect.CodeInvalidArgument},
		{"page token of the wrong type", &parleyv1.SearchUsersRequest{Prefix: "a", PageToken: b64([]byte(`{"u":1,"i":"x"}`))}, caller.Token, connect.CodeInvalidArgument},
		{"page token over 512 chars", &parleyv1.SearchUsersRequest{Prefix: "a", PageToken: strings.Repeat("A", 513)}, caller.Token, connect.CodeInvalidArgument},
		{"page_size 101", &parleyv1.SearchUsersRequest{Prefix: "a", PageSize: 101}, caller.Token, connect.CodeInvalidArgument},
		{"negative page_size", &parleyv1.SearchUsersRequest{Prefix: "a", PageSize: -1}, caller.Token, connect.CodeInvalidArgument},
		{"empty prefix", &parleyv1.SearchUsersRequest{Prefix: ""}, caller.Token, connect.CodeInvalidArgument},
		{"prefix over 50 chars", &parleyv1.SearchUsersRequest{Prefix: strings.Repeat("a", 51)}, caller.Token, connect.CodeInvalidArgument},
		{"no token", &parleyv1.SearchUsersRequest{Prefix: "a"}, "", connect.CodeUnauthenticated},
	}
	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		for _, tc := range cases {
			t.Run(p.Name+"/"+tc.name, func(t *testing.T) {
				before := snapshot(t, srv, caller.ID)
				res, err := c.User.SearchUsers(context.Background(), servertest.WithToken(tc.req, tc.token))
				if err == nil {
					t.Fatalf("SearchUsers = %v, want code %v", res.Msg, tc.want)
				}
				servertest.WantCode(t, err, tc.want)
				wantUnchanged(t, srv, caller.ID, before)
			})
		}
	}
}

// TestUserService_SearchUsers_DefaultPageSize leaves page_size unset and
// gets pages of 20.
func TestUserService_SearchUsers_DefaultPageSize(t *testing.T) {
	srv := servertest.New(t)
	c := servertest.NewClients(srv, servertest.Protocols[0])
	caller := servertest.Register(t, c.Auth, servertest.UniqueName("Pager"))
	prefix := servertest.UniqueName("many") + "x"
	for i := range 21 {
		servertest.Register(t, c.Auth, fmt.Sprintf("%s%02d", prefix, i))
	}
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			res := search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: prefix})
			if n := len(res.GetUsers()); n != 20 || res.GetNextPageToken() == "" {
				t.Fatalf("first page: %d users, next_page_token %q; want 20 and a token", n, res.GetNextPageToken())
			}
			res = search(t, c, caller.Token, &parleyv1.SearchUsersRequest{Prefix: prefix, PageToken: res.GetNextPageToken()})
			if got, want := usernames(res.GetUsers()), []string{prefix + "20"}; !slices.Equal(got, want) || res.GetNextPageToken() != "" {
				t.Errorf("second page: %q, next_page_token %q; want %q and no token", got, res.GetNextPageToken(), want)
			}
		})
	}
}

// TestUserService_SearchUsers_NULByte searches for a prefix, and continues
// from a page token, holding a NUL character: valid UTF-8 that PostgreSQL
// text cannot hold. The server must answer (no user has such a name) or
// refuse it as invalid_argument, not fail with internal.
func TestUserService_SearchUsers_NULByte(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	caller := servertest.Register(t, base.Auth, servertest.UniqueName("NulSearch"))
	cases := []struct {
		name string
		req  *parleyv1.SearchUsersRequest
	}{
		{"prefix", &parleyv1.SearchUsersRequest{Prefix: "a\x00"}},
		{"page token", &parleyv1.SearchUsersRequest{Prefix: "a", PageToken: base64.RawURLEncoding.EncodeToString([]byte(`{"u":"a\u0000","i":1}`))}},
	}
	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		for _, tc := range cases {
			t.Run(p.Name+"/"+tc.name, func(t *testing.T) {
				before := snapshot(t, srv, caller.ID)
				res, err := c.User.SearchUsers(context.Background(), servertest.WithToken(tc.req, caller.Token))
				if err == nil {
					if len(res.Msg.GetUsers()) != 0 {
						t.Errorf("SearchUsers = %q, want no users", usernames(res.Msg.GetUsers()))
					}
					return
				}
				servertest.WantCode(t, err, connect.CodeInvalidArgument)
				wantUnchanged(t, srv, caller.ID, before)
			})
		}
	}
}
