package media_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// TestAvatars_ChangedWhileDeleted: an avatar image made an avatar again,
// through another instance, while its avatar is deleted (a user's), or
// while it is replaced (a group's), is never left as an avatar whose file
// is gone. Each round races the two requests; whichever wins, every
// avatar that names the image serves it.
func TestAvatars_ChangedWhileDeleted(t *testing.T) {
	srvA, srvB := newServer(t), newServer(t)
	p := servertest.Protocols[0]
	ctx := context.Background()
	alice := newUser(t, srvA, p)
	aliceB := userOn(srvB, p, alice)
	serves := func(url string) bool {
		t.Helper()
		res, _ := get(t, srvA, alice, url)
		return res.StatusCode == http.StatusOK
	}
	race := func(a, b func() error) {
		t.Helper()
		var wg sync.WaitGroup
		wg.Go(func() { _ = a() })
		wg.Go(func() { _ = b() })
		wg.Wait()
	}
	grp := servertest.GroupChat(t, alice.chats, alice.token, "g").GetId()
	for i := range 15 {
		img := alice.upload(t, "", fmt.Sprintf("me%d.png", i), "image/png", pngImage(t, 40, 40))
		added, err := alice.avatar.AddAvatar(ctx, req(alice, &parleyv1.AddAvatarRequest{MediaId: img.GetId()}))
		if err != nil {
			t.Fatalf("AddAvatar: %v", err)
		}
		race(func() error {
			_, err := alice.avatar.DeleteAvatar(ctx, req(alice, &parleyv1.DeleteAvatarRequest{AvatarId: added.Msg.GetAvatar().GetId()}))
			return err
		}, func() error {
			_, err := aliceB.avatar.AddAvatar(ctx, req(aliceB, &parleyv1.AddAvatarRequest{MediaId: img.GetId()}))
			return err
		})
		mine, err := alice.avatar.ListAvatars(ctx, req(alice, &parleyv1.ListAvatarsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range mine.Msg.GetAvatars() {
			if a.GetUrl() == img.GetUrl() && !serves(a.GetUrl()) {
				t.Fatalf("round %d: avatar %d names an image whose file is gone", i, a.GetId())
			}
		}

		// The group's: one admin replaces X by Y while another sets X.
		x := alice.upload(t, "", fmt.Sprintf("x%d.png", i), "image/png", pngImage(t, 40, 40))
		y := alice.upload(t, "", fmt.Sprintf("y%d.png", i), "image/png", pngImage(t, 40, 40))
		set := func(u *user, m *parleyv1.Media) func() error {
			return func() error {
				_, err := u.chats.UpdateChat(ctx, req(u, &parleyv1.UpdateChatRequest{ChatId: grp, AvatarMediaId: m.GetId()}))
				return err
			}
		}
		if err := set(alice, x)(); err != nil {
			t.Fatalf("UpdateChat: %v", err)
		}
		race(set(alice, y), set(aliceB, x))
		c, err := alice.chats.GetChat(ctx, req(alice, &parleyv1.GetChatRequest{ChatId: grp}))
		if err != nil {
			t.Fatal(err)
		}
		if url := c.Msg.GetChat().GetAvatarUrl(); url != "" && !serves(url) {
			t.Fatalf("round %d: the group's avatar names an image whose file is gone", i)
		}
	}
}
