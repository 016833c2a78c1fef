# The site under daphne. Used by docker-compose.yml; configured only through environment variables.
FROM python:3.11-slim
# No .env is read in the image (.dockerignore keeps it out, and BROADCAST_DOTENV is empty).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 BROADCAST_DOTENV=
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_DEBUG=1 python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && exec daphne -e tcp:port=8000:interface=0.0.0.0:backlog=1024 broadcast_site.asgi:application"]
