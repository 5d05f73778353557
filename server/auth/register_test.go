package auth_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

func TestAuthService_Register(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			name := servertest.UniqueName("Zoë.Łukasz_")
			phone := "+4915112345678"
			res, err := c.Auth.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
				Username: name, Email: servertest.UniqueName("zoe") + "@Example.com", Password: servertest.Password, PhoneNumber: &phone,
			}))
			if err != nil {
				t.Fatalf("Register: %v", err)
			}
			me := res.Msg.GetMe()
			if got := me.GetUser().GetUsername(); got != name {
				t.Errorf("username = %q, want %q stored literally", got, name)
			}
			if got := me.GetPhoneNumber(); got != phone {
				t.Errorf("phone = %q, want %q", got, phone)
			}
			av := me.GetActiveAvatar()
			if !av.GetIsActive() || !av.GetIsRandom() || !strings.HasPrefix(av.GetUrl(), "/avatars/identicon/") {
				t.Errorf("first avatar = %v, want an active random identicon", av)
			}
			tok := res.Msg.GetTokens()
			if tok.GetAccessToken() == "" || tok.GetRefreshToken() == "" || tok.GetSessionId() == "" {
				t.Fatalf("tokens = %v, want a full session", tok)
			}
			got, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, tok.GetAccessToken()))
			if err != nil {
				t.Fatalf("GetMe with the new token: %v", err)
			}
			if got.Msg.GetMe().GetUser().GetId() != me.GetUser().GetId() {
				t.Errorf("GetMe id = %d, want %d", got.Msg.GetMe().GetUser().GetId(), me.GetUser().GetId())
			}
		})
	}
}

// TestAuthService_Register_BadInput sends requests that must be refused
// and checks that none of them creates a user.
func TestAuthService_Register_BadInput(t *testing.T) {
	srv := servertest.New(t)
	existing := servertest.UniqueName("taken")
	servertest.Register(t, servertest.NewClients(srv, servertest.Protocols[0]).Auth, existing)
	long := func(n int) string { return strings.Repeat("a", n) }
	phone := func(s string) *string { return &s }
	cases := []struct {
		name string
		req  *parleyv1.RegisterRequest
		want connect.Code
	}{
		{"empty username", &parleyv1.RegisterRequest{Username: "", Email: "e1@example.com", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"username over 50 chars", &parleyv1.RegisterRequest{Username: long(51), Email: "e2@example.com", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"username with SQL metacharacters", &parleyv1.RegisterRequest{Username: "x'; DROP TABLE users; --", Email: "e3@example.com", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"username with a space", &parleyv1.RegisterRequest{Username: "a b", Email: "e4@example.com", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"empty email", &parleyv1.RegisterRequest{Username: "u5", Email: "", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"invalid email", &parleyv1.RegisterRequest{Username: "u6", Email: "not-an-email", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"email over 100 chars", &parleyv1.RegisterRequest{Username: "u7", Email: long(95) + "@example.com", Password: servertest.Password}, connect.CodeInvalidArgument},
		{"password of 7 bytes", &parleyv1.RegisterRequest{Username: "u8", Email: "e8@example.com", Password: "1234567"}, connect.CodeInvalidArgument},
		{"password over 1024 bytes", &parleyv1.RegisterRequest{Username: "u9", Email: "e9@example.com", Password: long(1025)}, connect.CodeInvalidArgument},
		{"phone over 15 chars", &parleyv1.RegisterRequest{Username: "u10", Email: "e10@example.com", Password: servertest.Password, PhoneNumber: phone("+1234567890123456")}, connect.CodeInvalidArgument},
		{"phone not E.164", &parleyv1.RegisterRequest{Username: "u11", Email: "e11@example.com", Password: servertest.Password, PhoneNumber: phone("555-1234")}, connect.CodeInvalidArgument},
		{"username taken in another case", &parleyv1.RegisterRequest{Username: strings.ToUpper(existing), Email: "e12@example.com", Password: servertest.Password}, connect.CodeAlreadyExists},
		{"email taken in another case", &parleyv1.RegisterRequest{Username: "u13", Email: strings.ToUpper(existing) + "@EXAMPLE.com", Password: servertest.Password}, connect.CodeAlreadyExists},
	}
	for _, p := range []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]} {
		c := servertest.NewClients(srv, p)
		for _, tc := range cases {
			t.Run(p.Name+"/"+tc.name, func(t *testing.T) {
				before := countUsers(t, srv)
				_, err := c.Auth.Register(context.Background(), connect.NewRequest(tc.req))
				servertest.WantCode(t, err, tc.want)
				if after := countUsers(t, srv); after != before {
					t.Errorf("users: %d before, %d after; want nothing written", before, after)
				}
			})
		}
	}
}
