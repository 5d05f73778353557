-- Usernames are unique by their key: the name case- and width-folded by
-- PRECIS UsernameCaseMapped (RFC 8265), which SQL cannot compute. The
-- server fills it in at start-up for the accounts that have none (see
-- server/user/username.go); an older account whose name's key another
-- holds keeps its name, and its key is marked with its id ("erin#7").
-- lower(username) stays unique as before.

-- +goose Up
ALTER TABLE "users" ADD COLUMN "username_key" character varying NULL;
CREATE UNIQUE INDEX "users_username_key_key" ON "users" ("username_key");
-- Search by prefix of the key, or of the lowered name while there is no key.
CREATE INDEX "users_username_search" ON "users" ((coalesce("username_key", lower("username"))) text_pattern_ops);
DROP INDEX "users_lower_username_pattern";

-- +goose Down
CREATE INDEX "users_lower_username_pattern" ON "users" (lower("username") text_pattern_ops);
DROP INDEX "users_username_search";
DROP INDEX "users_username_key_key";
ALTER TABLE "users" DROP COLUMN "username_key";
