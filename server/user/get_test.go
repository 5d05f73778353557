package user_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

func TestUserService_GetMe(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			name := servertest.UniqueName("GetMe")
			phone := "+4915112345678"
			start := time.Now()
			acc := servertest.RegisterWith(t, c.Auth, &parleyv1.RegisterRequest{
				Username: name, Email: strings.ToLower(name) + "@example.com", Password: servertest.Password, PhoneNumber: &phone,
			})

			me := getMe(t, c, acc.Token)
			if got := me.GetUser().GetId(); got != acc.ID {
				t.Errorf("id = %d, want %d", got, acc.ID)
			}
			if got := me.GetUser().GetUsername(); got != name {
				t.Errorf("username = %q, want %q", got, name)
			}
			if got, want := me.GetEmail(), strings.ToLower(name)+"@example.com"; got != want {
				t.Errorf("email = %q, want %q", got, want)
			}
			if got := me.GetPhoneNumber(); got != phone {
				t.Errorf("phone = %q, want %q", got, phone)
			}
			if me.GetUser().GetCreatedAt() == nil {
				t.Errorf("created_at unset, want the registration time")
			}
			if me.GetLastLoginAt() == nil {
				t.Fatalf("last_login_at unset, want the registration time")
			}
			if got := me.GetLastLoginAt().AsTime(); got.Before(start.Add(-time.Minute)) || got.After(time.Now().Add(time.Minute)) {
				t.Errorf("last_login_at = %v, want about %v", got, start)
			}

			av := me.GetActiveAvatar()
			if !av.GetIsActive() || !av.GetIsRandom() {
				t.Errorf("active avatar = %v, want is_active and is_random", av)
			}
			if !strings.HasPrefix(av.GetUrl(), "/avatars/identicon/") || !strings.HasSuffix(av.GetUrl(), ".png") {
				t.Errorf("avatar url = %q, want /avatars/identicon/<seed>.png", av.GetUrl())
			}
			if av.GetUserId() != acc.ID {
				t.Errorf("avatar user_id = %d, want %d", av.GetUserId(), acc.ID)
			}
			if got := me.GetUser().GetAvatarUrl(); got != av.GetUrl() {
				t.Errorf("user.avatar_url = %q, want the active avatar's %q", got, av.GetUrl())
			}
			db := wantOneActive(t, srv, acc.ID, av.GetId())
			if db.AvatarURL != av.GetUrl() {
				t.Errorf("database avatar url = %q, GetMe says %q", db.AvatarURL, av.GetUrl())
			}
		})
	}
}

func TestUserService_GetMe_LastLogin(t *testing.T) {
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) { cfg.Now = clock.Now }))
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("LastLogin"))
			first := getMe(t, c, acc.Token).GetLastLoginAt().AsTime()

			clock.Advance(time.Hour)
			res, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: acc.Username, Password: servertest.Password}))
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			got := getMe(t, c, res.Msg.GetTokens().GetAccessToken()).GetLastLoginAt().AsTime()
			if want := first.Add(time.Hour); !got.Equal(want) {
				t.Errorf("last_login_at after a login an hour later = %v, want %v", got, want)
			}
		})
	}
}

func TestUserService_GetMe_Unauthenticated(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Anon"))
			before := snapshot(t, srv, acc.ID)
			for _, token := range []string{"", "not.a.jwt", acc.Token + "x"} {
				res, err := c.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, token))
				if err == nil {
					t.Fatalf("GetMe with token %q = %v, want unauthenticated", token, res.Msg)
				}
				servertest.WantCode(t, err, connect.CodeUnauthenticated)
			}
			wantUnchanged(t, srv, acc.ID, before)
		})
	}
}

func TestUserService_GetUser(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			caller := servertest.Register(t, c.Auth, servertest.UniqueName("Caller"))
			phone := "+442071234567"
			other := servertest.RegisterWith(t, c.Auth, &parleyv1.RegisterRequest{
				Username: servertest.UniqueName("Other"), Email: servertest.UniqueName("secret") + "@example.com", Password: servertest.Password, PhoneNumber: &phone,
			})
			desc := "likes long walks"
			if _, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Description: &desc}, other.Token)); err != nil {
				t.Fatalf("UpdateProfile: %v", err)
			}
			otherMe := getMe(t, c, other.Token)

			res, err := c.User.GetUser(context.Background(), servertest.WithToken(&parleyv1.GetUserRequest{UserId: other.ID}, caller.Token))
			if err != nil {
				t.Fatalf("GetUser: %v", err)
			}
			u := res.Msg.GetUser()
			if u.GetId() != other.ID {
				t.Errorf("id = %d, want %d", u.GetId(), other.ID)
			}
			if u.GetUsername() != other.Username {
				t.Errorf("username = %q, want %q", u.GetUsername(), other.Username)
			}
			if u.GetDescription() != desc {
				t.Errorf("description = %q, want %q", u.GetDescription(), desc)
			}
			if want := otherMe.GetActiveAvatar().GetUrl(); want == "" || u.GetAvatarUrl() != want {
				t.Errorf("avatar_url = %q, want the active avatar's %q", u.GetAvatarUrl(), want)
			}
			if u.GetCreatedAt() == nil || !u.GetCreatedAt().AsTime().Equal(otherMe.GetUser().GetCreatedAt().AsTime()) {
				t.Errorf("created_at = %v, want %v", u.GetCreatedAt(), otherMe.GetUser().GetCreatedAt())
			}
		})
	}
}

// TestUserService_GetUser_NoPrivateFields reads another user over the
// Connect protocol's JSON and checks that the body carries none of their
// private fields.
func TestUserService_GetUser_NoPrivateFields(t *testing.T) {
	srv := servertest.New(t)
	c := servertest.NewClients(srv, servertest.Protocols[0])
	caller := servertest.Register(t, c.Auth, servertest.UniqueName("Reader"))
	phone := "+14155550123"
	other := servertest.RegisterWith(t, c.Auth, &parleyv1.RegisterRequest{
		Username: servertest.UniqueName("Private"), Email: servertest.UniqueName("hidden") + "@example.com", Password: servertest.Password, PhoneNumber: &phone,
	})

	body, err := json.Marshal(map[string]any{"userId": other.ID})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/parley.v1.UserService/GetUser", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+caller.Token)
	res, err := servertest.Protocols[0].HTTPClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status = %d (%s), want 200", res.StatusCode, got)
	}
	if !bytes.Contains(got, []byte(other.Username)) || !bytes.Contains(got, []byte(strconv.Itoa(int(other.ID)))) {
		t.Fatalf("body = %s, want the user %d %q", got, other.ID, other.Username)
	}
	for _, secret := range []string{other.Email, strings.SplitN(other.Email, "@", 2)[0], phone, "email", "phone", "password"} {
		if bytes.Contains(bytes.ToLower(got), []byte(strings.ToLower(secret))) {
			t.Errorf("body = %s, contains %q; want no private field of another user", got, secret)
		}
	}
}

func TestUserService_GetUser_BadInput(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			caller := servertest.Register(t, c.Auth, servertest.UniqueName("Asker"))
			cases := []struct {
				name  string
				id    int32
				token string
				want  connect.Code
			}{
				{"unknown id", 2147483647, caller.Token, connect.CodeNotFound},
				{"user_id 0", 0, caller.Token, connect.CodeInvalidArgument},
				{"negative user_id", -1, caller.Token, connect.CodeInvalidArgument},
				{"no token", caller.ID, "", connect.CodeUnauthenticated},
				{"garbage token", caller.ID, "not.a.jwt", connect.CodeUnauthenticated},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					before := snapshot(t, srv, caller.ID)
					res, err := c.User.GetUser(context.Background(), servertest.WithToken(&parleyv1.GetUserRequest{UserId: tc.id}, tc.token))
					if err == nil {
						t.Fatalf("GetUser(%d) = %v, want code %v", tc.id, res.Msg, tc.want)
					}
					servertest.WantCode(t, err, tc.want)
					wantUnchanged(t, srv, caller.ID, before)
				})
			}
		})
	}
}
