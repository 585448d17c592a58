-- LoRA adapters registered through `POST /v1/adapters` (PEFT directories served over a base
-- decoder of the models dir) are model rows too, so `/v1/models` lists them and requests
-- name them like any fine-tuned model; this flag tells them from the models jobs produced.
ALTER TABLE models ADD COLUMN registered_adapter BOOLEAN NOT NULL DEFAULT FALSE;
