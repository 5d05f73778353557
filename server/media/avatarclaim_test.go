package media

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestAvatarClaims_TakenOverKept: an avatar image whose avatar is being
// deleted or replaced, made an avatar again by another request before
// the deletion reaches it, keeps its file. The requests are interleaved
// step by step, as the services take them, on a clock that stands still,
// so that every claim is made within one millisecond.
func TestAvatarClaims_TakenOverKept(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	lib, fs := testLibrary(t, "avatarclaims", func() time.Time { return now }, nil)
	const alice = 1
	image := func() *mediaDoc {
		t.Helper()
		m := &mediaDoc{ID: bson.NewObjectID(), UploaderID: alice, FileType: TypeImage, Avatar: true,
			State: stateReady, StateAt: now, CreatedAt: now, Loose: true}
		putMedia(t, lib, fs, m)
		return m
	}
	exists := func(m *mediaDoc) bool {
		t.Helper()
		_, err := lib.store.get(ctx, m.ID)
		if err != nil && !errors.Is(err, errNoMedia) {
			t.Fatal(err)
		}
		obj, serr := fs.Open(ctx, originalKey(m.ID))
		if serr == nil {
			obj.Close()
		}
		if (err == nil) != (serr == nil) {
			t.Fatalf("media %s: document %v, file %v", m.ID.Hex(), err, serr)
		}
		return err == nil
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	claim := func(c Claim, err error) Claim {
		t.Helper()
		must(err)
		return c
	}
	claimed := func(_ string, c Claim, err error) Claim {
		t.Helper()
		must(err)
		return c
	}
	recorded := func(m *mediaDoc) (int, *bson.ObjectID) {
		t.Helper()
		got, err := lib.store.get(ctx, m.ID)
		must(err)
		return got.AvatarID, got.GroupID
	}

	t.Run("user avatar", func(t *testing.T) {
		// Avatar 7 is deleted (detach, then the row, then the file)
		// while AddAvatar makes the same upload avatar 8.
		m := image()
		made := claimed(lib.ClaimAvatar(ctx, alice, m.ID))
		must(lib.AttachAvatar(ctx, m.ID, 7, made))
		detached := claim(lib.DetachAvatar(ctx, m.URL, 7))
		took := claimed(lib.ClaimAvatar(ctx, alice, m.ID))
		must(lib.DeleteAvatar(ctx, m.URL, 7, detached))
		if !exists(m) {
			t.Fatal("the image that AddAvatar took over was deleted with the avatar it left")
		}
		// An AttachAvatar of avatar 7 that comes late records nothing.
		must(lib.AttachAvatar(ctx, m.ID, 7, made))
		if avatar, _ := recorded(m); avatar != 0 {
			t.Errorf("a late AttachAvatar recorded deleted avatar %d on an image claimed since", avatar)
		}
		// With no AddAvatar in between, the deletion goes through; so
		// it does when avatar 8 was never recorded on its image.
		must(lib.AttachAvatar(ctx, m.ID, 8, took))
		if avatar, _ := recorded(m); avatar != 8 {
			t.Fatalf("AttachAvatar with its claim recorded avatar %d, want 8", avatar)
		}
		must(lib.DeleteAvatar(ctx, m.URL, 8, claim(lib.DetachAvatar(ctx, m.URL, 8))))
		if exists(m) {
			t.Error("the image of a deleted avatar is kept")
		}
		unrecorded := image()
		claimed(lib.ClaimAvatar(ctx, alice, unrecorded.ID))
		must(lib.DeleteAvatar(ctx, unrecorded.URL, 9, claim(lib.DetachAvatar(ctx, unrecorded.URL, 9))))
		if exists(unrecorded) {
			t.Error("the image of a deleted avatar never recorded on it is kept")
		}
	})

	t.Run("group avatar replaced", func(t *testing.T) {
		// One admin replaces the group's avatar while another sets it
		// back to the image being replaced.
		chat := bson.NewObjectID()
		m := image()
		made := claimed(lib.ClaimGroupAvatar(ctx, alice, m.ID, chat))
		must(lib.AttachGroupAvatar(ctx, m.URL, chat, made))
		detached := claim(lib.DetachGroupAvatar(ctx, m.URL, chat))
		// The first change's AttachGroupAvatar, late, records nothing.
		must(lib.AttachGroupAvatar(ctx, m.URL, chat, made))
		if _, group := recorded(m); group != nil {
			t.Error("a late AttachGroupAvatar recorded the group on an image detached since")
		}
		back := claimed(lib.ClaimGroupAvatar(ctx, alice, m.ID, chat))
		must(lib.DeleteGroupAvatar(ctx, m.URL, chat, detached))
		if !exists(m) {
			t.Fatal("the image set back as the group's avatar was deleted as the one replaced")
		}
		must(lib.AttachGroupAvatar(ctx, m.URL, chat, back))
		if _, group := recorded(m); group == nil || *group != chat {
			t.Fatalf("AttachGroupAvatar with its claim recorded group %v, want %s", group, chat.Hex())
		}
		must(lib.DeleteGroupAvatar(ctx, m.URL, chat, claim(lib.DetachGroupAvatar(ctx, m.URL, chat))))
		if exists(m) {
			t.Error("the group's replaced avatar image is kept")
		}
	})

	t.Run("group avatar never recorded", func(t *testing.T) {
		// A change stopped before recording the group on its image;
		// the next change detaches it, and the older claim's holder
		// (clean-up, or the stalled change) can no longer record it.
		chat := bson.NewObjectID()
		m := image()
		made := claimed(lib.ClaimGroupAvatar(ctx, alice, m.ID, chat))
		detached := claim(lib.DetachGroupAvatar(ctx, m.URL, chat))
		must(lib.AttachGroupAvatar(ctx, m.URL, chat, made))
		if _, group := recorded(m); group != nil {
			t.Error("an AttachGroupAvatar with the claim from before the detach recorded the group")
		}
		must(lib.DeleteGroupAvatar(ctx, m.URL, chat, detached))
		if exists(m) {
			t.Error("the replaced image, never recorded on the group, is kept")
		}
	})

	t.Run("group avatar lost", func(t *testing.T) {
		// Two admins set the same image; the first finds another
		// change won and deletes what it claimed, which the second has
		// claimed since.
		chat := bson.NewObjectID()
		m := image()
		first := claimed(lib.ClaimGroupAvatar(ctx, alice, m.ID, chat))
		second := claimed(lib.ClaimGroupAvatar(ctx, alice, m.ID, chat))
		must(lib.DeleteGroupAvatar(ctx, m.URL, chat, first))
		if !exists(m) {
			t.Fatal("an image claimed again for the group was deleted by the change that lost")
		}
		must(lib.DeleteGroupAvatar(ctx, m.URL, chat, second))
		if exists(m) {
			t.Error("an image whose change lost is kept")
		}
	})
}
