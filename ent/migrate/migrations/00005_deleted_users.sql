-- Account deletion: the tombstone of each deleted account. It is written
-- before anything is deleted (the account then stops signing in and being
-- found), outlives the users row (its id reads as a deleted account's, and
-- its username's key is held back for a while), and says whether the
-- deletion finished (a sweep finishes those that stopped part-way).

-- +goose Up
CREATE TABLE "deleted_users" (
    "user_id" integer NOT NULL,
    "username_key" character varying NOT NULL,
    "deleted_at" timestamptz NOT NULL,
    "finished_at" timestamptz NULL,
    PRIMARY KEY ("user_id")
);
CREATE INDEX "deleteduser_username_key_deleted_at" ON "deleted_users" ("username_key", "deleted_at");
CREATE INDEX "deleted_users_unfinished" ON "deleted_users" ("deleted_at") WHERE finished_at IS NULL;

-- +goose Down
DROP TABLE "deleted_users";
