-- The avatar that serves an image, found by its URL: AddAvatar checks that
-- no other avatar serves it, and media clean-up finds the avatar of an
-- upload whose record stopped part-way (both scanned the table before).

-- +goose Up
CREATE INDEX "avatar_avatar_url" ON "avatars" ("avatar_url");

-- +goose Down
DROP INDEX "avatar_avatar_url";
