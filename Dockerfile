# The site: WORKERS daphne workers under supervisord (deploy/serve.sh), configured only through
# environment variables. Used by docker-compose.yml.
FROM python:3.11-slim
# No .env is read in the image (.dockerignore keeps it out, and BROADCAST_DOTENV is empty).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 BROADCAST_DOTENV= \
    HOST=0.0.0.0 PORT=8000 WORKERS=1 RUN_DIR=/run/broadcast
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Static files (admin CSS, the pages' JS) are collected into the image; the site serves them.
RUN DJANGO_DEBUG=1 python manage.py collectstatic --noinput
EXPOSE 8000
# Alone, the container migrates first; docker-compose.yml migrates once, in its own service.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec deploy/serve.sh"]
