package user_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

func ptr(s string) *string { return &s }

// updateProfile calls UpdateProfile and fails the test on an error.
func updateProfile(t *testing.T, c servertest.Clients, token string, req *parleyv1.UpdateProfileRequest) *parleyv1.Me {
	t.Helper()
	res, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(req, token))
	if err != nil {
		t.Fatalf("UpdateProfile(%v): %v", req, err)
	}
	return res.Msg.GetMe()
}

func TestUserService_UpdateProfile(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		t.Run(p.Name+"/username", func(t *testing.T) {
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Before"))
			newName := servertest.UniqueName("Renamed.ü-")
			me := updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Username: &newName})
			if got := me.GetUser().GetUsername(); got != newName {
				t.Errorf("response username = %q, want %q", got, newName)
			}
			if got := snapshot(t, srv, acc.ID).Username; got != newName {
				t.Errorf("database username = %q, want %q", got, newName)
			}

			res, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: newName, Password: servertest.Password}))
			if err != nil {
				t.Fatalf("Login with the new name: %v", err)
			}
			if got := res.Msg.GetMe().GetUser().GetId(); got != acc.ID {
				t.Errorf("Login with the new name signed in user %d, want %d", got, acc.ID)
			}
			_, err = c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: acc.Username, Password: servertest.Password}))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
		})

		t.Run(p.Name+"/username in another case of its own", func(t *testing.T) {
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("casey"))
			upper := strings.ToUpper(acc.Username)
			me := updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Username: &upper})
			if got := me.GetUser().GetUsername(); got != upper {
				t.Errorf("username = %q, want %q", got, upper)
			}
		})

		t.Run(p.Name+"/phone set and clear", func(t *testing.T) {
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Phone"))
			phone := "+33612345678"
			me := updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{PhoneNumber: &phone})
			if got := me.GetPhoneNumber(); got != phone {
				t.Errorf("response phone = %q, want %q", got, phone)
			}
			if got, want := snapshot(t, srv, acc.ID).Phone, orNil(&phone); got != want {
				t.Errorf("database phone = %s, want %s", got, want)
			}

			me = updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{PhoneNumber: ptr("")})
			if got := me.GetPhoneNumber(); got != "" {
				t.Errorf("response phone after clearing = %q, want none", got)
			}
			if got := snapshot(t, srv, acc.ID).Phone; got != "<nil>" {
				t.Errorf("database phone after clearing = %s, want NULL", got)
			}
		})

		t.Run(p.Name+"/description set and clear", func(t *testing.T) {
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Desc"))
			desc := "Hello there"
			me := updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Description: &desc})
			if got := me.GetUser().GetDescription(); got != desc {
				t.Errorf("response description = %q, want %q", got, desc)
			}
			if got, want := snapshot(t, srv, acc.ID).Description, orNil(&desc); got != want {
				t.Errorf("database description = %s, want %s", got, want)
			}

			me = updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Description: ptr("")})
			if got := me.GetUser().GetDescription(); got != "" {
				t.Errorf("response description after clearing = %q, want none", got)
			}
			if got := snapshot(t, srv, acc.ID).Description; got != "<nil>" {
				t.Errorf("database description after clearing = %s, want NULL", got)
			}
		})

		t.Run(p.Name+"/unset fields stay", func(t *testing.T) {
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Partial"))
			updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{PhoneNumber: ptr("+491701234567"), Description: ptr("kept")})
			before := snapshot(t, srv, acc.ID)

			me := updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{})
			wantUnchanged(t, srv, acc.ID, before)
			if me.GetPhoneNumber() != "+491701234567" || me.GetUser().GetDescription() != "kept" || me.GetUser().GetUsername() != acc.Username {
				t.Errorf("after an empty update: %v, want everything as it was", me)
			}

			desc := "changed"
			updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Description: &desc})
			want := before
			want.Description = orNil(&desc)
			wantUnchanged(t, srv, acc.ID, want)
		})

		t.Run(p.Name+"/description stored literally", func(t *testing.T) {
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Literal"))
			for _, desc := range []string{
				`'); DROP TABLE users; --`,
				`{"$ne": null}`,
				`{"$where": "sleep(1000)"}`,
				"Привет, мир 👋",
				`back\slash 100% _under_ "quotes" <b>html</b>`,
				"line one\nline two\ttabbed",
				strings.Repeat("👋", 500),
			} {
				me := updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Description: &desc})
				if got := me.GetUser().GetDescription(); got != desc {
					t.Errorf("response description = %q, want %q", got, desc)
				}
				if got := getMe(t, c, acc.Token).GetUser().GetDescription(); got != desc {
					t.Errorf("GetMe description = %q, want %q", got, desc)
				}
				if got, want := snapshot(t, srv, acc.ID).Description, orNil(&desc); got != want {
					t.Errorf("database description = %s, want %s", got, want)
				}
			}
			// The users table is still there and still holds the user.
			if n, err := srv.App.DB().Ent.User.Query().Count(context.Background()); err != nil || n == 0 {
				t.Errorf("users: %d, %v; want the table intact", n, err)
			}
		})
	}
}

// TestUserService_UpdateProfile_MultibyteUsername sets usernames the API
// documents as valid (up to 50 characters of letters) that take more than
// 50 bytes in UTF-8.
func TestUserService_UpdateProfile_MultibyteUsername(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Multi"))
			// 50 characters, 100 bytes; unique by its last characters.
			suffix := strings.NewReplacer("0", "а", "1", "б", "2", "в", "3", "г", "4", "д", "5", "е", "6", "ж", "7", "з", "8", "и", "9", "й").
				Replace(servertest.UniqueName(""))
			name := strings.Repeat("ж", 50-len([]rune(suffix))) + suffix
			res, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Username: &name}, acc.Token))
			if err != nil {
				t.Fatalf("UpdateProfile(username of 50 characters, %d bytes): %v; want it accepted", len(name), err)
			}
			if got := res.Msg.GetMe().GetUser().GetUsername(); got != name {
				t.Errorf("username = %q, want %q", got, name)
			}
		})
	}
	t.Run("register", func(t *testing.T) {
		c := servertest.NewClients(srv, servertest.Protocols[0])
		name := strings.Repeat("я", 49) + "ж"
		_, err := c.Auth.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
			Username: name, Email: servertest.UniqueName("multi") + "@example.com", Password: servertest.Password,
		}))
		if err != nil {
			t.Fatalf("Register(username of 50 characters, %d bytes): %v; want it accepted", len(name), err)
		}
	})
}

// TestUserService_UpdateProfile_BadInput sends updates that must be
// refused and checks that none of them changes the user.
func TestUserService_UpdateProfile_BadInput(t *testing.T) {
	srv := servertest.New(t)
	long := func(s string, n int) *string { return ptr(strings.Repeat(s, n)) }
	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		acc := servertest.Register(t, c.Auth, servertest.UniqueName("Victim"))
		updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{PhoneNumber: ptr("+12025550123"), Description: ptr("original")})
		taken := servertest.Register(t, c.Auth, servertest.UniqueName("TakenName"))

		cases := []struct {
			name  string
			req   *parleyv1.UpdateProfileRequest
			token string
			want  connect.Code
		}{
			{"username over 50 chars", &parleyv1.UpdateProfileRequest{Username: long("a", 51)}, acc.Token, connect.CodeInvalidArgument},
			{"username with a space", &parleyv1.UpdateProfileRequest{Username: ptr("a b")}, acc.Token, connect.CodeInvalidArgument},
			{"empty username", &parleyv1.UpdateProfileRequest{Username: ptr("")}, acc.Token, connect.CodeInvalidArgument},
			{"username with SQL metacharacters", &parleyv1.UpdateProfileRequest{Username: ptr("x'; DROP TABLE users; --")}, acc.Token, connect.CodeInvalidArgument},
			{"username taken, in upper case", &parleyv1.UpdateProfileRequest{Username: ptr(strings.ToUpper(taken.Username))}, acc.Token, connect.CodeAlreadyExists},
			{"username taken, in lower case", &parleyv1.UpdateProfileRequest{Username: ptr(strings.ToLower(taken.Username))}, acc.Token, connect.CodeAlreadyExists},
			{"username taken, with a valid description", &parleyv1.UpdateProfileRequest{Username: ptr(strings.ToUpper(taken.Username)), Description: ptr("sneaky")}, acc.Token, connect.CodeAlreadyExists},
			{"phone not E.164", &parleyv1.UpdateProfileRequest{PhoneNumber: ptr("12345")}, acc.Token, connect.CodeInvalidArgument},
			{"phone with a leading zero", &parleyv1.UpdateProfileRequest{PhoneNumber: ptr("+0123456789")}, acc.Token, connect.CodeInvalidArgument},
			{"phone over 15 chars", &parleyv1.UpdateProfileRequest{PhoneNumber: ptr("+1234567890123456")}, acc.Token, connect.CodeInvalidArgument},
			{"description over 500 chars", &parleyv1.UpdateProfileRequest{Description: long("d", 501)}, acc.Token, connect.CodeInvalidArgument},
			{"description over 500 chars of emoji", &parleyv1.UpdateProfileRequest{Description: long("👋", 501)}, acc.Token, connect.CodeInvalidArgument},
			{"valid description with a bad phone", &parleyv1.UpdateProfileRequest{Description: ptr("changed"), PhoneNumber: ptr("555-1234")}, acc.Token, connect.CodeInvalidArgument},
			{"no token", &parleyv1.UpdateProfileRequest{Description: ptr("hacked")}, "", connect.CodeUnauthenticated},
		}
		for _, tc := range cases {
			t.Run(p.Name+"/"+tc.name, func(t *testing.T) {
				before := snapshot(t, srv, acc.ID)
				takenBefore := snapshot(t, srv, taken.ID)
				res, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(tc.req, tc.token))
				if err == nil {
					t.Fatalf("UpdateProfile = %v, want code %v", res.Msg, tc.want)
				}
				servertest.WantCode(t, err, tc.want)
				wantUnchanged(t, srv, acc.ID, before)
				wantUnchanged(t, srv, taken.ID, takenBefore)
			})
		}
	}
}

// TestUserService_UpdateProfile_NULByte sets a description holding a NUL
// character: valid UTF-8 and within 500 characters, so the request passes
// validation, but PostgreSQL text cannot hold it. The server must refuse
// it as invalid_argument (or store it), not fail with internal.
func TestUserService_UpdateProfile_NULByte(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			acc := servertest.Register(t, c.Auth, servertest.UniqueName("Nul"))
			updateProfile(t, c, acc.Token, &parleyv1.UpdateProfileRequest{Description: ptr("original")})
			before := snapshot(t, srv, acc.ID)
			desc := "before\x00after"
			res, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Description: &desc}, acc.Token))
			if err == nil {
				if got := res.Msg.GetMe().GetUser().GetDescription(); got != desc {
					t.Errorf("description = %q, want %q or invalid_argument", got, desc)
				}
				return
			}
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
			wantUnchanged(t, srv, acc.ID, before)
		})
	}
}

// TestUserService_UpdateProfile_RenameRace renames several users to the
// same new name at once: exactly one wins, the others learn the name is
// taken, and none fails with internal.
func TestUserService_UpdateProfile_RenameRace(t *testing.T) {
	srv := servertest.New(t)
	base := servertest.NewClients(srv, servertest.Protocols[0])
	const racers = 8
	accs := make([]servertest.Account, racers)
	for i := range accs {
		accs[i] = servertest.Register(t, base.Auth, servertest.UniqueName("Racer"))
	}
	name := servertest.UniqueName("Wanted")
	errs := make([]error, racers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, acc := range accs {
		c := servertest.NewClients(srv, protocols[i%len(protocols)])
		// Half ask for the name in another case.
		want := name
		if i%2 == 1 {
			want = strings.ToUpper(name)
		}
		wg.Go(func() {
			<-start
			_, errs[i] = c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Username: &want}, acc.Token))
		})
	}
	close(start)
	wg.Wait()
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
		case connect.CodeOf(err) != connect.CodeAlreadyExists:
			t.Errorf("racer %d: %v, want success or already_exists", i, err)
		}
	}
	if winners != 1 {
		t.Errorf("%d racers got the name, want exactly 1", winners)
	}
	holders := 0
	for _, acc := range accs {
		got := snapshot(t, srv, acc.ID).Username
		switch {
		case strings.EqualFold(got, name):
			holders++
		case got != acc.Username:
			t.Errorf("user %d is named %q, want %q or the new name", acc.ID, got, acc.Username)
		}
	}
	if holders != 1 {
		t.Errorf("%d users hold the name in the database, want exactly 1", holders)
	}
}
