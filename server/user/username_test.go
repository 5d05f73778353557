package user_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"

	entuser "github.com/parley-chat/parley/ent/user"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// userCount counts the accounts whose username has prefix in any case, as
// the database holds them.
func userCount(t *testing.T, srv *servertest.Server) int {
	t.Helper()
	n, err := srv.App.DB().Ent.User.Query().Count(context.Background())
	if err != nil {
		t.Fatalf("count users: %v", err)
	}
	return n
}

func register(c servertest.Clients, name string) (*connect.Response[parleyv1.RegisterResponse], error) {
	return c.Auth.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
		Username: name, Email: servertest.UniqueName("lookalike") + "@example.com", Password: servertest.Password,
	}))
}

// TestRegister_LookAlikeNames registers names that look like taken ones:
// those that differ only by width or case (the Kelvin sign is a "K") are
// the same name, and a name that mixes scripts is refused; no refusal
// creates an account.
func TestRegister_LookAlikeNames(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			// A number, then letters: a name no other test registers.
			base := strings.TrimPrefix(servertest.UniqueName("x"), "x") + "alice"
			servertest.Register(t, c.Auth, base)
			kelvin := strings.TrimPrefix(servertest.UniqueName("x"), "x") + "k"
			servertest.Register(t, c.Auth, kelvin)

			cases := []struct {
				name string
				want connect.Code
				msg  string
			}{
				{strings.Replace(base, "a", "ａ", 1), connect.CodeAlreadyExists, "username is taken"}, // full-width a
				{strings.ToUpper(base), connect.CodeAlreadyExists, "username is taken"},
				{strings.Replace(strings.ToUpper(base), "A", "Ａ", 1), connect.CodeAlreadyExists, "username is taken"},
				{strings.TrimSuffix(kelvin, "k") + "\u212a", connect.CodeAlreadyExists, "username is taken"},              // Kelvin sign
				{strings.Replace(base, "a", "а", 1), connect.CodeInvalidArgument, "mixes the Cyrillic and Latin scripts"}, // Cyrillic a
				{strings.Replace(base, "a", "α", 1), connect.CodeInvalidArgument, "mixes the Greek and Latin scripts"},
				{"ＡＢＣ\u00a0" + base, connect.CodeInvalidArgument, "username"}, // a no-break space: refused by the pattern
				// 26 characters that NFC writes as 52, past the column's 50.
				{strings.Repeat("\u0958", 26), connect.CodeInvalidArgument, "52 characters once normalised; at most 50"},
			}
			before := userCount(t, srv)
			for _, tc := range cases {
				_, err := register(c, tc.name)
				servertest.WantCode(t, err, tc.want)
				if err != nil && !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("Register(%q) = %v, want a message with %q", tc.name, err, tc.msg)
				}
			}
			if after := userCount(t, srv); after != before {
				t.Errorf("refused registrations created %d accounts", after-before)
			}
		})
	}
}

// TestRegister_NormalisedName checks that a name typed in full width is
// stored, shown and signed in to in its usual width, in any case, and that
// names in one script other than Latin, or in the script mixes of Chinese,
// Japanese and Korean, are accepted.
func TestRegister_NormalisedName(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			n := strings.TrimPrefix(servertest.UniqueName("x"), "x")
			res, err := register(c, "Ｂｏｂ"+n) // full-width Bob
			if err != nil {
				t.Fatalf("Register: %v", err)
			}
			want := "Bob" + n
			if got := res.Msg.GetMe().GetUser().GetUsername(); got != want {
				t.Errorf("Register(Ｂｏｂ%s) shows %q, want %q", n, got, want)
			}
			for _, login := range []string{want, "BOB" + n, "ｂｏｂ" + n} {
				if _, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{
					Login: login, Password: servertest.Password,
				})); err != nil {
					t.Errorf("Login(%q): %v", login, err)
				}
			}
			// Searching finds it in any width too.
			found := search(t, c, res.Msg.GetTokens().GetAccessToken(), &parleyv1.SearchUsersRequest{Prefix: "ＢＯＢ" + n})
			if got := usernames(found.GetUsers()); !slices.Equal(got, []string{want}) {
				t.Errorf("SearchUsers(ＢＯＢ%s) = %q, want [%q]", n, got, want)
			}
			// Scripts whose letters take combining marks (Devanagari,
			// Tamil, Thai), and a name typed decomposed ("e" and an
			// acute), which is shown composed.
			for _, name := range []string{"Борис" + n, "東京tokyo" + n, "ひらがなカタカナ漢字abc" + n, "서울seoul" + n, "台北ㄅㄆ" + n,
				"राम" + n, "முருகன்" + n, "สุดา" + n} {
				if _, err := register(c, name); err != nil {
					t.Errorf("Register(%q): %v", name, err)
				}
			}
			res, err = register(c, "Jose\u0301"+n)
			if err != nil {
				t.Fatalf("Register(Jose + combining acute): %v", err)
			}
			if got := res.Msg.GetMe().GetUser().GetUsername(); got != "José"+n {
				t.Errorf("Register(Jose + combining acute) shows %q, want %q", got, "José"+n)
			}
			// A mark on nothing is no name.
			_, err = register(c, "\u0301"+n)
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("Register(a combining mark first) = %v, want invalid_argument", err)
			}
		})
	}
}

// TestUpdateProfile_LookAlikeNames renames to names that look like taken
// ones; each refusal leaves the account as it was, and a rename to one's
// own name in another case is allowed.
func TestUpdateProfile_LookAlikeNames(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			taken := strings.TrimPrefix(servertest.UniqueName("x"), "x") + "carol"
			servertest.Register(t, c.Auth, taken)
			me := servertest.Register(t, c.Auth, servertest.UniqueName("dave"))
			before := snapshot(t, srv, me.ID)
			for _, tc := range []struct {
				name string
				want connect.Code
			}{
				{strings.ToUpper(taken), connect.CodeAlreadyExists},
				{strings.Replace(taken, "c", "ｃ", 1), connect.CodeAlreadyExists},
				{strings.Replace(me.Username, "a", "а", 1), connect.CodeInvalidArgument},
			} {
				_, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Username: &tc.name}, me.Token))
				servertest.WantCode(t, err, tc.want)
			}
			if after := snapshot(t, srv, me.ID); !equalState(before, after) {
				t.Errorf("refused renames changed the account: %+v, then %+v", before, after)
			}
			upper := strings.ToUpper(me.Username)
			res, err := c.User.UpdateProfile(context.Background(), servertest.WithToken(&parleyv1.UpdateProfileRequest{Username: &upper}, me.Token))
			if err != nil {
				t.Fatalf("UpdateProfile(%q): %v", upper, err)
			}
			if got := res.Msg.GetMe().GetUser().GetUsername(); got != upper {
				t.Errorf("renamed to %q, want %q", got, upper)
			}
		})
	}
}

func equalState(a, b userState) bool {
	return a.Username == b.Username && a.Email == b.Email && a.Phone == b.Phone &&
		a.Description == b.Description && slices.Equal(a.Avatars, b.Avatars)
}

// TestCheckUsernames starts a server on a database whose accounts predate
// username keys, two of them with names that are one after normalisation.
// The start-up check gives each account its key, the younger of the two a
// key marked with its id, and logs it; both keep signing in and both are
// found by search.
func TestCheckUsernames(t *testing.T) {
	dbURL := servertest.CreateDatabase(t)
	useDB := servertest.WithConfig(func(c *app.Config) { c.DatabaseURL = dbURL })
	first := servertest.New(t, useDB)
	c := servertest.NewClients(first, servertest.Protocols[0])
	older := servertest.Register(t, c.Auth, "erin")
	younger := servertest.Register(t, c.Auth, "frank")
	plain := servertest.Register(t, c.Auth, "grace")
	ctx := context.Background()
	db := first.App.DB().Ent
	// As before keys: no key, and the younger account named "ｅrin".
	if err := db.User.Update().ClearUsernameKey().Exec(ctx); err != nil {
		t.Fatalf("clear keys: %v", err)
	}
	if err := db.User.UpdateOneID(int(younger.ID)).SetUsername("ｅrin").Exec(ctx); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if err := first.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	var logged servertest.SyncBuffer
	srv := servertest.New(t, useDB, servertest.WithLog(slog.NewJSONHandler(&logged, nil)))
	keys := map[int32]*string{}
	for _, id := range []int32{older.ID, younger.ID, plain.ID} {
		u, err := srv.App.DB().Ent.User.Query().Where(entuser.ID(int(id))).Only(ctx)
		if err != nil {
			t.Fatalf("read user %d: %v", id, err)
		}
		keys[id] = u.UsernameKey
	}
	if k := keys[older.ID]; k == nil || *k != "erin" {
		t.Errorf("erin's key = %v, want erin", k)
	}
	if k := keys[plain.ID]; k == nil || *k != "grace" {
		t.Errorf("grace's key = %v, want grace", k)
	}
	if k, want := keys[younger.ID], fmt.Sprintf("erin#%d", younger.ID); k == nil || *k != want {
		t.Errorf("ｅrin's key = %v, want %s (erin holds erin)", k, want)
	}
	var collisions []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logged.String()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err == nil && strings.Contains(rec["msg"].(string), "username collides") {
			collisions = append(collisions, rec)
		}
	}
	if len(collisions) != 1 || collisions[0]["user_id"] != float64(younger.ID) || collisions[0]["holder_user_id"] != float64(older.ID) {
		t.Errorf("logged collisions %v, want one: user %d with holder %d", collisions, younger.ID, older.ID)
	}

	for _, p := range protocols {
		c := servertest.NewClients(srv, p)
		for login, want := range map[string]int32{"erin": older.ID, "ERIN": older.ID, "ｅrin": younger.ID, "grace": plain.ID} {
			res, err := c.Auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: login, Password: servertest.Password}))
			if err != nil {
				t.Errorf("%s: Login(%q): %v", p.Name, login, err)
				continue
			}
			if got := res.Msg.GetMe().GetUser().GetId(); got != want {
				t.Errorf("%s: Login(%q) signed in user %d, want %d", p.Name, login, got, want)
			}
		}
		found := search(t, c, plain.Token, &parleyv1.SearchUsersRequest{Prefix: "er"})
		if got := usernames(found.GetUsers()); !slices.Equal(got, []string{"erin", "ｅrin"}) && !slices.Equal(got, []string{"ｅrin", "erin"}) {
			t.Errorf("%s: SearchUsers(er) = %q, want erin and ｅrin", p.Name, got)
		}
		// A new account cannot take the name either way.
		for _, name := range []string{"Erin", "ｅrin"} {
			_, err := register(c, name)
			servertest.WantCode(t, err, connect.CodeAlreadyExists)
		}
	}
}
